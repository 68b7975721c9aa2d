import * as tf from '@tensorflow/tfjs-core';
import { SafetensorsError } from './errors';
import { float32ToBf16, float32ToF16 } from './half';
import type { SafetensorsDtype } from './safetensors-format';

/** Dtypes {@link serializeSafetensors} can write. */
export type WritableDtype = Extract<SafetensorsDtype, 'F32' | 'F16' | 'BF16' | 'I32' | 'I64' | 'BOOL'>;

/** Tensor data given as a typed array rather than a tfjs tensor. */
export interface RawTensor {
  dtype: 'float32' | 'int32' | 'bool';
  shape: readonly number[];
  values: Float32Array | Int32Array | Uint8Array;
}

/** Options for {@link serializeSafetensors}. */
export interface SerializeOptions {
  /** String key/value pairs written under `__metadata__` (PEFT writes `{ format: 'pt' }`). */
  metadata?: Record<string, string>;
  /**
   * The dtype to write, for every tensor or per tensor name. Defaults: float32 → F32,
   * int32 → I32, bool → BOOL. Floats may be written as F16 or BF16 (round to nearest even),
   * int32 as I64.
   */
  dtype?: WritableDtype | Record<string, WritableDtype>;
}

const DTYPE_BYTES: Record<WritableDtype, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, BOOL: 1 };
const ALLOWED: Record<RawTensor['dtype'], readonly WritableDtype[]> = {
  float32: ['F32', 'F16', 'BF16'],
  int32: ['I32', 'I64'],
  bool: ['BOOL'],
};
const DEFAULT: Record<RawTensor['dtype'], WritableDtype> = { float32: 'F32', int32: 'I32', bool: 'BOOL' };

/**
 * Encodes values as a safetensors dtype's little-endian bytes (floats to F32/F16/BF16, rounding to
 * nearest even; int32 to I32/I64). A view on `values` where no conversion is needed.
 *
 * @example
 * ```ts
 * const bytes = encodeValues(new Float32Array([1, 2]), 'BF16'); // 4 bytes
 * ```
 */
export function encodeValues(values: RawTensor['values'], dtype: WritableDtype): Uint8Array {
  switch (dtype) {
    case 'F32':
    case 'I32':
    case 'BOOL':
      return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    case 'F16':
      return new Uint8Array(float32ToF16(values as Float32Array).buffer);
    case 'BF16':
      return new Uint8Array(float32ToBf16(values as Float32Array).buffer);
    case 'I64':
      return new Uint8Array(BigInt64Array.from(values as Int32Array, (v) => BigInt(v)).buffer);
  }
}

function chooseDtype(name: string, from: RawTensor['dtype'], option: SerializeOptions['dtype']): WritableDtype {
  if (option === undefined) return DEFAULT[from];
  // One dtype for all: it applies to the tensors it suits (F16 to floats, I64 to ints), others keep their default.
  if (typeof option === 'string') return ALLOWED[from].includes(option) ? option : DEFAULT[from];
  const want = option[name];
  if (want === undefined) return DEFAULT[from];
  if (!ALLOWED[from].includes(want)) {
    throw new SafetensorsError(
      { file: '<output>', tensor: name, field: 'dtype' },
      `a ${from} tensor cannot be written as ${want}; use one of ${ALLOWED[from].join(', ')}`,
    );
  }
  return want;
}

async function readValues(name: string, t: tf.Tensor | RawTensor): Promise<RawTensor> {
  if (t instanceof tf.Tensor) {
    if (t.isDisposed)
      throw new SafetensorsError({ file: '<output>', tensor: name, field: 'data' }, 'tensor is already disposed');
    if (t.dtype !== 'float32' && t.dtype !== 'int32' && t.dtype !== 'bool') {
      throw new SafetensorsError(
        { file: '<output>', tensor: name, field: 'dtype' },
        `tfjs dtype ${t.dtype} cannot be written; cast to float32 or int32 first`,
      );
    }
    // Read through data(): dataSync() is unavailable on the webgpu backend in Node.
    const data = (await t.data()) as RawTensor['values'];
    const values = t.dtype === 'bool' ? Uint8Array.from(data as Uint8Array, (v) => (v ? 1 : 0)) : data;
    return { dtype: t.dtype, shape: t.shape, values };
  }
  return t;
}

/**
 * Serializes tensors to safetensors bytes, in the layout Python's `safetensors` writes
 * (sorted names, header padded with spaces to 8 bytes). Works in browsers and Node.
 *
 * @example
 * ```ts
 * import { serializeSafetensors } from '@lora/tensor';
 * const bytes = await serializeSafetensors({ 'lora_A.weight': a }, { metadata: { format: 'pt' } });
 * ```
 */
export async function serializeSafetensors(
  tensors: Record<string, tf.Tensor | RawTensor>,
  options: SerializeOptions = {},
): Promise<Uint8Array> {
  const metadata = options.metadata;
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') {
        throw new SafetensorsError(
          { file: '<output>', field: '__metadata__' },
          `value of '${k}' is ${JSON.stringify(v)}; metadata values must be strings`,
        );
      }
    }
  }
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header.__metadata__ = metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    if (name.length === 0)
      throw new SafetensorsError({ file: '<output>', field: 'name' }, 'tensor names must not be empty');
    if (name === '__metadata__')
      throw new SafetensorsError(
        { file: '<output>', field: 'name' },
        "'__metadata__' is reserved; pass metadata through options.metadata",
      );
    const raw = await readValues(name, tensors[name] as tf.Tensor | RawTensor);
    const numel = raw.shape.reduce((a, b) => a * b, 1);
    if (raw.values.length !== numel) {
      throw new SafetensorsError(
        { file: '<output>', tensor: name, field: 'shape' },
        `shape ${JSON.stringify(raw.shape)} has ${numel} elements but ${raw.values.length} values were given`,
      );
    }
    const dtype = chooseDtype(name, raw.dtype, options.dtype);
    const data = encodeValues(raw.values, dtype);
    header[name] = { dtype, shape: [...raw.shape], data_offsets: [offset, offset + numel * DTYPE_BYTES[dtype]] };
    chunks.push(data);
    offset += data.length;
  }
  let json = JSON.stringify(header);
  const encoder = new TextEncoder();
  let headerBytes = encoder.encode(json);
  const pad = (8 - (headerBytes.length % 8)) % 8;
  if (pad > 0) {
    json += ' '.repeat(pad);
    headerBytes = encoder.encode(json);
  }
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let p = 8 + headerBytes.length;
  for (const c of chunks) {
    out.set(c, p);
    p += c.length;
  }
  return out;
}
