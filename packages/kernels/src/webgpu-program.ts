/**
 * The parts of tfjs-backend-webgpu's program interface our kernels use, typed here so that this
 * package never imports the backend (in Node it must be imported only after `navigator.gpu` exists,
 * which `@lora/tensor`'s initBackend arranges).
 *
 * A program is an object the backend compiles once per `shaderKey` (plus the ranks and dtypes of
 * its inputs) and dispatches: the backend writes the WGSL prelude (bindings `result`, one read-only
 * array per entry of `variableNames`, and a `uniforms` struct holding each input's shape and
 * strides, `outShape`, `size` when asked and the fields in `uniforms`), then `getUserCode()`, which
 * defines `fn main(index : i32)` for a flat dispatch layout.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackendLike as TensorWebGPUBackend, WebGPUProgramLike, WebGPUUniform } from '@lora/tensor';

export type { WebGPUProgramLike };
export type UniformValue = WebGPUUniform;

/** @lora/tensor's backend interface, with what this package's kernels also use. */
export interface WebGPUBackendLike extends TensorWebGPUBackend {
  makeTensorInfo(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  disposeData(dataId: tf.DataId): boolean;
  device: { limits: Record<string, number> };
}

/** Workgroup size of row kernels: one workgroup per row, each thread striding along it. */
export const ROW_WG = 256;

/**
 * WGSL that reduces the workgroup array `arr` ({@link ROW_WG} entries, after a barrier) into
 * `arr[0]` with `combine`; every thread of the workgroup must run it (it holds barriers).
 */
export function treeReduce(arr: string, combine: (a: string, b: string) => string): string {
  return `
      for (var s : i32 = ${ROW_WG / 2}; s > 0; s = s >> 1u) {
        if (lid < s) { ${arr}[lid] = ${combine(`${arr}[lid]`, `${arr}[lid + s]`)}; }
        workgroupBarrier();
      }`;
}

/**
 * A program with one workgroup of {@link ROW_WG} threads per row of `rows` (split over y when there
 * are more rows than a dispatch dimension holds); `uniforms` must hold a `rows : i32` field. The body
 * defines `fn rowMain(lid : i32, row : i32, rowRaw : i32)`: `lid` the thread, `rowRaw` the
 * workgroup's row, `row` the same clamped to the last one (a workgroup past the end computes the
 * last row again, so that every thread reaches the barriers, and must not write). The workgroup array
 * `red` (`ROW_WG` entries of `reduce`) is declared for {@link treeReduce}.
 */
export function rowProgram(
  key: string,
  outputShape: number[],
  variableNames: string[],
  rows: number,
  uniforms: string,
  body: string,
  reduce: 'f32' | 'vec2<f32>' = 'f32',
): WebGPUProgramLike {
  return {
    outputShape,
    shaderKey: key,
    dispatchLayout: { x: [0] },
    dispatch: [rows, 1, 1],
    variableNames,
    workgroupSize: [ROW_WG, 1, 1],
    uniforms,
    // tfjs reshapes a flat dispatch over 65 535 workgroups into a square: the row index undoes that
    getUserCode: () => `
      var<workgroup> red : array<${reduce}, ${ROW_WG}>;
      ${body}
      fn main(index : i32) {
        let rowRaw = i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
        rowMain(i32(localId.x), min(rowRaw, uniforms.rows - 1), rowRaw);
      }`,
  };
}

/** `f` run on the first call only (kernel registration). */
export function once(f: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    f();
  };
}

/**
 * An elementwise program over `size` outputs, `component` (1 or 4) per thread; `main(index)` is
 * called once per (vector) element with `index < uniforms.size` guaranteed by the wrapper.
 */
export function elementwiseProgram(
  key: string,
  outputShape: number[],
  variableNames: string[],
  component: 1 | 4,
  uniforms: string,
  body: string,
): WebGPUProgramLike {
  const size = outputShape.reduce((a, b) => a * b, 1) / component;
  const wg = 64;
  return {
    outputShape,
    shaderKey: `${key}_c${component}`,
    dispatchLayout: { x: [0] },
    dispatch: [Math.ceil(size / wg), 1, 1],
    variableNames,
    workgroupSize: [wg, 1, 1],
    size: true,
    uniforms,
    outputComponent: component,
    variableComponents: variableNames.map(() => component),
    getUserCode: () => `
      fn elementwise(index : i32) {
        ${body}
      }
      fn main(index : i32) {
        if (index < uniforms.size) { elementwise(index); }
      }`,
  };
}

/** The same tensor seen with another shape (no copy): the programs index flat buffers. */
export function flat(t: tf.TensorInfo, shape: number[] = [sizeOf(t.shape)]): tf.TensorInfo {
  return { dataId: t.dataId, shape, dtype: t.dtype };
}

export function sizeOf(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** A float32 kernel output in the shape the op promises (the program computed it flat). */
export function reshaped(out: tf.TensorInfo, shape: number[]): tf.TensorInfo {
  return { dataId: out.dataId, shape, dtype: out.dtype };
}

/** Registers a webgpu kernel once (re-registering would warn on every import of a second copy). */
export function registerWebGPUKernel(
  kernelName: string,
  kernelFunc: (args: {
    inputs: Record<string, tf.TensorInfo>;
    backend: WebGPUBackendLike;
    attrs: Record<string, unknown>;
  }) => tf.TensorInfo | tf.TensorInfo[],
): void {
  if (tf.getKernel(kernelName, 'webgpu')) return;
  tf.registerKernel({
    kernelName,
    backendName: 'webgpu',
    kernelFunc: kernelFunc as unknown as tf.KernelFunc,
  });
}

/** Registers a gradient once. */
export function registerGradientOnce(config: tf.GradConfig): void {
  if (tf.getGradient(config.kernelName)) return;
  tf.registerGradient(config);
}

/** Runs a registered kernel through the engine (recorded on the gradient tape like any op). */
export function runKernel<T extends tf.Tensor | tf.Tensor[] = tf.Tensor>(
  name: string,
  inputs: Record<string, tf.Tensor>,
  attrs: Record<string, unknown> = {},
): T {
  return tf.engine().runKernel(name, inputs as unknown as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as T;
}
