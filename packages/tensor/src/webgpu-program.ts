import type * as tf from '@tensorflow/tfjs-core';

/**
 * The parts of tfjs-backend-webgpu's program interface that a package's own WGSL programs use, typed
 * here so that no package imports the backend for them (in Node it may be imported only after
 * `navigator.gpu` exists, which {@link initBackend} arranges). The backend compiles a program once per
 * `shaderKey` and writes the WGSL prelude: the binding `result`, one read-only array per entry of
 * `variableNames` and a `uniforms` struct holding each input's shape and the fields in `uniforms`;
 * `getUserCode()` defines `main(index)`, with `localId` and `workgroupId` set.
 *
 * @example
 * ```ts
 * import type { WebGPUBackendLike, WebGPUProgramLike } from '@lora/tensor';
 * const backend = tf.backend() as unknown as WebGPUBackendLike;
 * const program: WebGPUProgramLike = { outputShape: [n], shaderKey: 'MyScale', dispatchLayout: { x: [0] },
 *   dispatch: [Math.ceil(n / 64), 1, 1], variableNames: ['x'], workgroupSize: [64, 1, 1], uniforms: 'factor : f32,',
 *   getUserCode: () => `fn main(index : i32) { if (index < ${n}) { result[index] = x[index] * uniforms.factor; } }` };
 * const out = backend.runWebGPUProgram(program, [input], 'float32', [{ type: 'float32', data: [2] }]);
 * ```
 */
export interface WebGPUProgramLike {
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[]; y?: number[]; z?: number[] };
  dispatch: [number, number, number];
  variableNames: string[];
  workgroupSize: [number, number, number];
  /** Adds `uniforms.size` (the output size, divided by `outputComponent`). */
  size?: boolean;
  /** Extra uniform fields, e.g. `'rows : i32,'`, filled in order by the uniform values. */
  uniforms?: string;
  outputComponent?: number;
  variableComponents?: number[];
  getUserCode(): string;
}

/** One uniform value of {@link WebGPUBackendLike.runWebGPUProgram}. */
export interface WebGPUUniform {
  type: 'int32' | 'float32' | 'uint32';
  data: number[];
}

/** The webgpu backend as far as {@link WebGPUProgramLike} programs need it. */
export interface WebGPUBackendLike {
  device?: { limits?: { maxComputeWorkgroupStorageSize?: number } };
  runWebGPUProgram(
    program: WebGPUProgramLike,
    inputs: tf.TensorInfo[],
    dtype: tf.DataType,
    uniforms?: WebGPUUniform[],
    output?: tf.TensorInfo,
  ): tf.TensorInfo;
}
