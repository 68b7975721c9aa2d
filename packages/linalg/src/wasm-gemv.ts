/**
 * Matrix–vector products straight on tfjs-wasm's heap, by a small WebAssembly SIMD module of our own
 * that imports the backend's memory. The bidiagonalisation's panel needs Tᵀ·v and T·u with the whole
 * trailing matrix T for every column; through `tf.matMul` each panel first transposes T and XNNPACK
 * packs both T and Tᵀ as "weights" (at 1024², ≈ 14 ms each, against ≈ 0.4 ms for one product), and
 * every product makes, runs and reads back tensors. Here T is read where it lies, in float32, with
 * 128-bit SIMD, and the vectors go through one scratch block of the heap.
 *
 * The module is assembled below from its instructions (no toolchain): two functions,
 * `gemvT(t, rows, cols, ld, v, y, r0)`: y[0:cols] = Σ_{r0 ≤ r < rows} v[r]·T[r, 0:cols], and
 * `gemv(t, rows, cols, ld, u, x, r0, c0)`: x[r] = Σ_{c0 ≤ c < cols} T[r, c]·u[c] for r0 ≤ r < rows,
 * with T row-major (leading dimension ld) and every pointer a byte offset into the heap.
 */
import * as tf from '@tensorflow/tfjs-core';

const uleb = (n: number): number[] => {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
};
const sleb = (n: number): number[] => {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
};

// the instructions used (WebAssembly core + fixed-width SIMD opcodes)
const get = (i: number) => [0x20, ...uleb(i)];
const set = (i: number) => [0x21, ...uleb(i)];
const tee = (i: number) => [0x22, ...uleb(i)];
const i32 = (n: number) => [0x41, ...sleb(n)];
const ADD = [0x6a];
const SUB = [0x6b];
const MUL = [0x6c];
const AND = [0x71];
const SHL = [0x74];
const GE_S = [0x4e];
const F32_LOAD = [0x2a, 2, 0];
const F32_STORE = [0x38, 2, 0];
const F32_ADD = [0x92];
const F32_MUL = [0x94];
const F32_ZERO = [0x43, 0, 0, 0, 0];
const vload = (offset = 0) => [0xfd, 0x00, 0, ...uleb(offset)];
const V_STORE = [0xfd, 0x0b, 0, 0];
const SPLAT = [0xfd, 0x13];
const V_ADD = [0xfd, 0xe4, 0x01];
const V_MUL = [0xfd, 0xe6, 0x01];
const lane = (l: number) => [0xfd, 0x1f, l];
const V_ZERO = [0xfd, 0x0c, ...new Array<number>(16).fill(0)];
const END = [0x0b];
/** `while (!(a >= b)) { body }`: block, loop, exit test, body, branch back. */
const whileLess = (a: number, b: number, body: number[]) => [
  0x02,
  0x40,
  0x03,
  0x40,
  ...get(a),
  ...get(b),
  ...GE_S,
  0x0d,
  1,
  ...body,
  0x0c,
  0,
  ...END,
  ...END,
];
/** base + (index << 2) */
const at = (base: number, index: number) => [...get(base), ...get(index), ...i32(2), ...SHL, ...ADD];
/** `i += n`. */
const inc = (i: number, n: number) => [...get(i), ...i32(n), ...ADD, ...set(i)];
/** `dst = t + 4·r·ld`: the byte address of row r. */
const rowAddress = (dst: number, t: number, r: number, ld: number) => [
  ...get(t),
  ...get(r),
  ...get(ld),
  ...MUL,
  ...i32(2),
  ...SHL,
  ...ADD,
  ...set(dst),
];
/** `acc += a[c … c + 3] · b[c … c + 3]` (four lanes, `offset` bytes on). */
const vdot = (acc: number, a: number, b: number, c: number, offset = 0) => [
  ...get(acc),
  ...at(a, c),
  ...vload(offset),
  ...at(b, c),
  ...vload(offset),
  ...V_MUL,
  ...V_ADD,
  ...set(acc),
];

const I32 = 0x7f;
const F32 = 0x7d;
const V128 = 0x7b;

function gemvTBody(): number[] {
  // params: t 0, rows 1, cols 2, ld 3, v 4, y 5, r0 6; locals: r 7, c 8, rowp 9, c4 10 (i32), s 11 (v128), sf 12 (f32)
  const [t, rows, cols, ld, v, y, r0, r, c, rowp, c4, s, sf] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
  const code = [
    ...get(cols),
    ...i32(-4),
    ...AND,
    ...set(c4),
    ...i32(0),
    ...set(c),
    ...whileLess(c, cols, [...at(y, c), ...F32_ZERO, ...F32_STORE, ...inc(c, 1)]),
    ...get(r0),
    ...set(r),
    ...whileLess(r, rows, [
      ...at(v, r),
      ...F32_LOAD,
      ...tee(sf),
      ...SPLAT,
      ...set(s),
      ...rowAddress(rowp, t, r, ld),
      ...i32(0),
      ...set(c),
      ...whileLess(c, c4, [
        ...at(y, c),
        ...at(y, c),
        ...vload(),
        ...at(rowp, c),
        ...vload(),
        ...get(s),
        ...V_MUL,
        ...V_ADD,
        ...V_STORE,
        ...inc(c, 4),
      ]),
      ...whileLess(c, cols, [
        ...at(y, c),
        ...at(y, c),
        ...F32_LOAD,
        ...at(rowp, c),
        ...F32_LOAD,
        ...get(sf),
        ...F32_MUL,
        ...F32_ADD,
        ...F32_STORE,
        ...inc(c, 1),
      ]),
      ...inc(r, 1),
    ]),
  ];
  return [3, 4, I32, 1, V128, 1, F32, ...code, ...END];
}

function gemvBody(): number[] {
  // params: t 0, rows 1, cols 2, ld 3, u 4, x 5, r0 6, c0 7; locals: r 8, c 9, rowp 10, c8 11, c4 12 (i32),
  // acc0 13, acc1 14 (v128), sum 15 (f32)
  const [t, rows, cols, ld, u, x, r0, c0, r, c, rowp, c8, c4, acc0, acc1, sum] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
  ];
  const code = [
    ...get(c0),
    ...get(cols),
    ...get(c0),
    ...SUB,
    ...i32(-8),
    ...AND,
    ...ADD,
    ...set(c8),
    ...get(c0),
    ...get(cols),
    ...get(c0),
    ...SUB,
    ...i32(-4),
    ...AND,
    ...ADD,
    ...set(c4),
    ...get(r0),
    ...set(r),
    ...whileLess(r, rows, [
      ...rowAddress(rowp, t, r, ld),
      ...V_ZERO,
      ...set(acc0),
      ...V_ZERO,
      ...set(acc1),
      ...get(c0),
      ...set(c),
      ...whileLess(c, c8, [...vdot(acc0, rowp, u, c), ...vdot(acc1, rowp, u, c, 16), ...inc(c, 8)]),
      ...whileLess(c, c4, [...vdot(acc0, rowp, u, c), ...inc(c, 4)]),
      ...get(acc0),
      ...get(acc1),
      ...V_ADD,
      ...set(acc0),
      ...get(acc0),
      ...lane(0),
      ...get(acc0),
      ...lane(1),
      ...F32_ADD,
      ...get(acc0),
      ...lane(2),
      ...F32_ADD,
      ...get(acc0),
      ...lane(3),
      ...F32_ADD,
      ...set(sum),
      ...whileLess(c, cols, [
        ...get(sum),
        ...at(rowp, c),
        ...F32_LOAD,
        ...at(u, c),
        ...F32_LOAD,
        ...F32_MUL,
        ...F32_ADD,
        ...set(sum),
        ...inc(c, 1),
      ]),
      ...at(x, r),
      ...get(sum),
      ...F32_STORE,
      ...inc(r, 1),
    ]),
  ];
  return [3, 5, I32, 2, V128, 1, F32, ...code, ...END];
}

const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
const name = (s: string) => [...uleb(s.length), ...[...s].map((ch) => ch.charCodeAt(0))];

/** The module's bytes. @internal */
export function gemvModuleBytes(): Uint8Array<ArrayBuffer> {
  const types = [2, 0x60, 7, ...new Array<number>(7).fill(I32), 0, 0x60, 8, ...new Array<number>(8).fill(I32), 0];
  const imports = [1, ...name('env'), ...name('memory'), 0x02, 0x00, 0x00];
  const funcs = [2, 0, 1];
  const exports = [2, ...name('gemvT'), 0x00, 0, ...name('gemv'), 0x00, 1];
  const bodies = [gemvTBody(), gemvBody()];
  const code = [bodies.length, ...bodies.flatMap((b) => [...uleb(b.length), ...b])];
  return Uint8Array.from([
    0x00,
    0x61,
    0x73,
    0x6d,
    1,
    0,
    0,
    0,
    ...section(1, types),
    ...section(2, imports),
    ...section(3, funcs),
    ...section(7, exports),
    ...section(10, code),
  ]);
}

/** The kernels bound to one heap. */
export interface HeapGemv {
  memory: WebAssembly.Memory;
  gemvT: (t: number, rows: number, cols: number, ld: number, v: number, y: number, r0: number) => void;
  gemv: (t: number, rows: number, cols: number, ld: number, u: number, x: number, r0: number, c0: number) => void;
  malloc: (bytes: number) => number;
  free: (ptr: number) => void;
  /** the byte offset of a float32 tensor's data on the heap */
  offsetOf: (t: tf.Tensor) => number;
}

interface WasmBackendLike {
  wasm?: { asm?: { memory?: unknown }; _malloc?: (n: number) => number; _free?: (p: number) => void };
  dataIdMap?: { get(id: object): { memoryOffset?: number } | undefined };
}

const bound = new WeakMap<object, HeapGemv | null>();
let compiled: WebAssembly.Module | null | undefined;

/**
 * The kernels on the active backend's heap when that backend is tfjs-wasm and this runtime has
 * WebAssembly SIMD; null otherwise (callers then use tf.matMul).
 * @internal
 */
export function heapGemv(): HeapGemv | null {
  if (tf.getBackend() !== 'wasm') return null;
  const backend = tf.backend() as unknown as WasmBackendLike;
  const cached = bound.get(backend);
  if (cached !== undefined) return cached;
  let out: HeapGemv | null = null;
  try {
    const memory = backend.wasm?.asm?.memory;
    const malloc = backend.wasm?._malloc;
    const free = backend.wasm?._free;
    const map = backend.dataIdMap;
    if (memory instanceof WebAssembly.Memory && malloc && free && map) {
      if (compiled === undefined) {
        const bytes = gemvModuleBytes();
        compiled = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
      }
      if (compiled) {
        const inst = new WebAssembly.Instance(compiled, { env: { memory } });
        const ex = inst.exports as unknown as Pick<HeapGemv, 'gemvT' | 'gemv'>;
        out = {
          memory,
          gemvT: ex.gemvT,
          gemv: ex.gemv,
          malloc: (n) => malloc(n),
          free: (p) => free(p),
          offsetOf: (t) => {
            const off = map.get(t.dataId)?.memoryOffset;
            if (off === undefined || t.dtype !== 'float32')
              throw new Error(
                `heapGemv: expected a float32 tensor held by this wasm backend, got ${t.dtype}${off === undefined ? ' (not on this heap)' : ''}`,
              );
            return off;
          },
        };
      }
    }
  } catch {
    out = null;
  }
  bound.set(backend, out);
  return out;
}
