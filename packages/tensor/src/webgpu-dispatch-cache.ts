/**
 * Cheaper dispatches for tfjs-backend-webgpu: its `recordAndSubmit` makes, for every program it
 * runs, a fresh uniform buffer (written with `queue.writeBuffer`), asks the pipeline for its bind
 * group layout and creates a bind group. Measured through Dawn in Node, the bind group alone costs
 * more host time than everything else a dispatch does. A training step repeats the same programs on
 * the same shapes, and tfjs's buffer pool hands the same buffers out in the same order step after
 * step, so this version keeps uniform buffers by content and bind groups by (pipeline, buffers): after
 * the first step most dispatches create nothing.
 *
 * Written against tfjs-backend-webgpu 4.22's backend (which this package pins): the same uniform
 * block (NaN, Infinity, each input's and the output's shape and strides, the output size, the
 * program's own fields, laid out by WGSL's alignment rules), the same command encoder, compute pass
 * and submit batching, the same bookkeeping of buffers in flight. Profiling (`tf.profile`'s timed
 * passes) and pixel programs go through tfjs's own code.
 *
 * `initBackend('webgpu')` installs it, so that every dispatch on webgpu takes it: tfjs's own ops,
 * `@lora/kernels`' programs, and the programs of packages that do not use `@lora/kernels`
 * (`@lora/linalg`'s Jacobi SVD, the subspace iterations of `@lora/intruders`). Before, it was
 * installed only once a `@lora/kernels` op ran, and intruder reduction on the H200 spent a third of
 * its host time making uniform buffers and bind groups.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUProgramLike, WebGPUUniform as UniformValue } from './webgpu-program';

interface GPUObjects {
  createBuffer(d: { size: number; usage: number; mappedAtCreation?: boolean }): GPUBufferLike;
  createBindGroup(d: { layout: unknown; entries: { binding: number; resource: unknown }[] }): unknown;
}
interface GPUBufferLike {
  getMappedRange(): ArrayBuffer;
  unmap(): void;
  destroy(): void;
}
interface PassLike {
  setPipeline(p: unknown): void;
  setBindGroup(i: number, g: unknown): void;
  dispatchWorkgroups(x: number, y: number, z: number): void;
}
interface TensorDataLike {
  resource: unknown;
  values?: ArrayLike<number> | null;
  dtype?: string;
  shape?: number[];
}
interface BufferManagerLike {
  freeBuffers: Map<string, object[]>;
  releaseBuffer(buffer: { size: number; usage: number }, reuse?: boolean): void;
  acquireBuffer?(size: number, usage: number): unknown;
}
interface Backend {
  device: GPUObjects & { queue?: { writeBuffer(buffer: unknown, offset: number, data: ArrayBufferView): void } };
  uploadToGPU?(dataId: tf.DataId): void;
  bufferManager: BufferManagerLike;
  tensorMap: { get(id: tf.DataId): TensorDataLike };
  commandQueueOwnedIds: WeakSet<object>;
  computePassEncoder: PassLike | null;
  commandEncoder: { beginComputePass(d: object): PassLike } | null;
  dispatchCountInPass: number;
  activeTimers?: unknown;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  recordAndSubmit(program: Program, output: tf.TensorInfo, inputs: tf.TensorInfo[], uniforms?: UniformValue[]): void;
}
type Program = WebGPUProgramLike & { pipeline: { getBindGroupLayout(i: number): unknown }; pixelsOpType?: unknown };

/**
 * Counts of the dispatch cache's hits and misses since it was installed (for benchmarks).
 *
 * @example
 * ```ts
 * const before = { ...dispatchCacheStats };
 * // … a training step on webgpu …
 * const hits = dispatchCacheStats.bindGroupHits - before.bindGroupHits;
 * ```
 */
export const dispatchCacheStats = { bindGroupHits: 0, bindGroupMisses: 0, uniformHits: 0, uniformMisses: 0 };

let enabled = true;

/**
 * Turns the webgpu dispatch cache on or off (on by default; `@lora/kernels`' `dispatchCache` option
 * sets it). Off, every dispatch takes tfjs-backend-webgpu's own path. Same results either way.
 *
 * @example
 * ```ts
 * setDispatchCache(false); // measure tfjs's own dispatch path
 * ```
 */
export function setDispatchCache(on: boolean): void {
  enabled = on;
}

const MAX_UNIFORMS = 8192;
const GPU_BUFFER_STORAGE = 0x80;
const GPU_BUFFER_COPY_SRC = 0x4;
const MAX_BIND_GROUPS = 32768;
const GPU_BUFFER_UNIFORM = 0x40;
const GPU_BUFFER_COPY_DST = 0x8;

/** Byte offsets of WGSL uniform fields of 1–6 components (tfjs's vec5/vec6 structs align to 16, and so does what follows them). */
function layout(lengths: number[]): { offsets: number[]; size: number } {
  const offsets: number[] = [];
  let offset = 0;
  let structAlign = 4;
  let previous = 0;
  for (const n of lengths) {
    let align = n === 1 ? 4 : n === 2 ? 8 : 16;
    if (previous >= 5) align = 16;
    structAlign = Math.max(structAlign, align);
    offset = Math.ceil(offset / align) * align;
    offsets.push(offset);
    offset += 4 * n;
    previous = n;
  }
  return { offsets, size: Math.ceil(offset / structAlign) * structAlign };
}

function strides(shape: number[]): number[] {
  const s: number[] = [];
  let acc = 1;
  for (let i = shape.length - 1; i > 0; i--) {
    acc *= shape[i] as number;
    s.unshift(acc);
  }
  return s;
}

const ids = new WeakMap<object, number>();
let nextId = 1;
function idOf(o: object): number {
  let id = ids.get(o);
  if (id === undefined) {
    id = nextId++;
    ids.set(o, id);
  }
  return id;
}

class DispatchCache {
  private readonly uniformBuffers = new Map<string, { buffer: GPUBufferLike; size: number }>();
  private readonly bindGroups = new Map<string, unknown>();
  private readonly layouts = new WeakMap<object, unknown>();
  private retired: GPUBufferLike[] = [];

  constructor(private readonly backend: Backend) {}

  /**
   * The uniform block of a dispatch, as a cached buffer keyed by what decides its contents: the
   * inputs' and output's shapes (the strides follow from them), the output size and the program's
   * own fields. The block itself is built only on a miss.
   */
  private uniformBuffer(
    program: Program,
    output: tf.TensorInfo,
    inputs: tf.TensorInfo[],
    own: UniformValue[] | undefined,
  ): { buffer: GPUBufferLike; size: number } {
    // shapes are digits and commas, the other parts start with a letter: no two dispatches whose
    // blocks differ share a key
    let key = '';
    for (const t of inputs) key += `${t.shape.join(',')};`;
    key += `${output.shape.join(',')};`;
    const size = program.size ? program.outputShape.reduce((x, y) => x * y, 1) / (program.outputComponent || 1) : -1;
    if (program.size) key += `s${size};`;
    if (own) for (const f of own) key += `${f.type[0]}${f.data.join(',')};`;
    const cached = this.uniformBuffers.get(key);
    if (cached) {
      dispatchCacheStats.uniformHits++;
      return cached;
    }
    dispatchCacheStats.uniformMisses++;
    const fields: UniformValue[] = [
      { type: 'float32', data: [Number.NaN] },
      { type: 'float32', data: [Number.POSITIVE_INFINITY] },
    ];
    for (const t of [...inputs, output]) {
      fields.push({ type: 'int32', data: t.shape.length ? t.shape : [1] });
      const st = strides(t.shape);
      fields.push({ type: 'int32', data: st.length ? st : [1] });
    }
    if (program.size) fields.push({ type: 'int32', data: [size] });
    if (own) for (const f of own) fields.push(f.data.length ? f : { ...f, data: [1] });
    const { offsets, size: bytesSize } = layout(fields.map((f) => f.data.length));
    if (this.uniformBuffers.size >= MAX_UNIFORMS) {
      // retired buffers may still be bound by recorded commands: destroyed after the next submit
      for (const u of this.uniformBuffers.values()) this.retired.push(u.buffer);
      this.uniformBuffers.clear();
      this.bindGroups.clear();
    }
    const buffer = this.backend.device.createBuffer({
      size: bytesSize,
      usage: GPU_BUFFER_UNIFORM | GPU_BUFFER_COPY_DST,
      mappedAtCreation: true,
    });
    const bytes = buffer.getMappedRange();
    fields.forEach((f, i) => {
      const View = f.type === 'int32' ? Int32Array : f.type === 'uint32' ? Uint32Array : Float32Array;
      new View(bytes, offsets[i], f.data.length).set(f.data);
    });
    buffer.unmap();
    const entry = { buffer, size: bytesSize };
    this.uniformBuffers.set(key, entry);
    return entry;
  }

  /** Records one dispatch; false when it must go through tfjs's own path instead. */
  record(program: Program, output: tf.TensorInfo, inputs: tf.TensorInfo[], own?: UniformValue[]): boolean {
    const b = this.backend;
    if (program.pixelsOpType != null || b.activeTimers != null) return false;
    const tensors = [output, ...inputs];
    const buffers: object[] = [];
    for (const t of tensors) {
      const r = b.tensorMap.get(t.dataId).resource;
      if (!(typeof GPUBuffer !== 'undefined' && r instanceof GPUBuffer)) return false;
      buffers.push(r);
    }
    const uniform = this.uniformBuffer(program, output, inputs, own);
    let key = `${idOf(program.pipeline)}:${idOf(uniform.buffer)}`;
    for (const buf of buffers) key += `,${idOf(buf)}`;
    let group = this.bindGroups.get(key);
    if (group) dispatchCacheStats.bindGroupHits++;
    else {
      dispatchCacheStats.bindGroupMisses++;
      if (this.bindGroups.size >= MAX_BIND_GROUPS) this.bindGroups.clear();
      let groupLayout = this.layouts.get(program.pipeline);
      if (groupLayout === undefined) {
        groupLayout = program.pipeline.getBindGroupLayout(0);
        this.layouts.set(program.pipeline, groupLayout);
      }
      const entries = buffers.map((buffer, i) => ({ binding: i, resource: { buffer } }));
      entries.push({
        binding: buffers.length,
        resource: { buffer: uniform.buffer, offset: 0, size: uniform.size } as never,
      });
      group = b.device.createBindGroup({ layout: groupLayout, entries });
      this.bindGroups.set(key, group);
    }
    for (const t of tensors) b.commandQueueOwnedIds.add(t.dataId);
    b.ensureCommandEncoderReady();
    if (!b.computePassEncoder)
      b.computePassEncoder = (b.commandEncoder as { beginComputePass(d: object): PassLike }).beginComputePass({});
    const pass = b.computePassEncoder;
    pass.setPipeline(program.pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(program.dispatch[0], program.dispatch[1], program.dispatch[2]);
    b.dispatchCountInPass++;
    if ((tf.env().get('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE') as number) <= b.dispatchCountInPass) {
      b.endComputePassEncoder();
      b.submitQueue();
      this.destroyRetired();
    }
    return true;
  }

  /** After a submit, uniform buffers evicted from the cache can go. */
  destroyRetired(): void {
    if (this.retired.length === 0) return;
    for (const buf of this.retired) buf.destroy();
    this.retired = [];
  }
}

const installed = new WeakSet<object>();

/**
 * Makes tfjs's buffer pool hand out, of the free buffers of a size, the oldest one (its free lists
 * kept sorted, newest first, so that `pop()` takes the oldest) instead of the last released. Which
 * buffers are free at the start of a step then decides which each tensor gets, not the order in which
 * the previous step happened to release them: the same buffers come back to the same tensors step
 * after step, and so do their bind groups.
 */
function orderBufferPool(manager: BufferManagerLike): void {
  const release = manager.releaseBuffer;
  manager.releaseBuffer = function (buffer, reuse = true) {
    release.call(this, buffer, reuse);
    if (!reuse) return;
    const list = this.freeBuffers.get(`${buffer.size}_${buffer.usage}`);
    if (!list || list.length < 2) return;
    // the buffer just pushed goes to its place: ids descending, so the oldest is last
    const b = list.pop() as object;
    const id = idOf(b);
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (idOf(list[mid] as object) > id) lo = mid + 1;
      else hi = mid;
    }
    list.splice(lo, 0, b);
  };
}

/**
 * Wraps the active webgpu backend's `recordAndSubmit` with the cache (once per backend; nothing on
 * other backends); {@link setDispatchCache} chooses per dispatch between it and tfjs's own path.
 * `initBackend('webgpu')` calls it; call it yourself after `tf.setBackend('webgpu')`.
 *
 * @example
 * ```ts
 * await tf.setBackend('webgpu');
 * ensureDispatchCache();
 * ```
 */
export function ensureDispatchCache(): void {
  const backend = tf.backend() as unknown as Backend;
  if (installed.has(backend) || typeof backend.recordAndSubmit !== 'function') return;
  installed.add(backend);
  if (backend.bufferManager?.freeBuffers instanceof Map) orderBufferPool(backend.bufferManager);
  const cache = new DispatchCache(backend);
  const own = backend.recordAndSubmit;
  backend.recordAndSubmit = function (program, output, inputs, uniforms) {
    if (enabled && cache.record(program, output, inputs, uniforms)) return;
    own.call(this, program, output, inputs, uniforms);
  };
  const ownUpload = backend.uploadToGPU;
  if (typeof ownUpload === 'function' && typeof backend.bufferManager?.acquireBuffer === 'function')
    backend.uploadToGPU = function (dataId) {
      if (!(enabled && uploadByWrite(this, dataId))) ownUpload.call(this, dataId);
    };
}

/**
 * A tensor's host values to the GPU through `queue.writeBuffer` into a buffer from tfjs's pool,
 * where tfjs 4.22 creates a mapped staging buffer for every upload that finds a pooled buffer (a
 * `createBuffer` each, the largest host cost of intruder reduction's small uploads). The write lands
 * in queue order before any command recorded after it, and a pooled buffer is not referenced by
 * commands still being recorded (tfjs frees those buffers only after they are submitted). False
 * when tfjs's own path should take it (already uploaded, no values, another dtype, empty).
 */
function uploadByWrite(b: Backend, dataId: tf.DataId): boolean {
  const d = b.tensorMap.get(dataId);
  const queue = b.device.queue;
  if (d.resource != null || !d.values || !queue || !d.shape) return false;
  const kind = d.dtype;
  if (kind !== 'float32' && kind !== 'int32' && kind !== 'bool') return false;
  const count = d.shape.reduce((x, y) => x * y, 1);
  if (count === 0 || d.values.length !== count) return false;
  const data =
    kind === 'float32'
      ? d.values instanceof Float32Array
        ? d.values
        : Float32Array.from(d.values)
      : d.values instanceof Int32Array
        ? d.values
        : Int32Array.from(d.values);
  const buffer = (b.bufferManager.acquireBuffer as (size: number, usage: number) => unknown)(
    4 * count,
    GPU_BUFFER_STORAGE | GPU_BUFFER_COPY_SRC | GPU_BUFFER_COPY_DST,
  );
  queue.writeBuffer(buffer, 0, data);
  d.values = null;
  d.resource = buffer;
  return true;
}
