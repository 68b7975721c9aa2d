import * as tf from '@tensorflow/tfjs-core';
import { SafetensorsError } from './errors';
import { bf16ToFloat32, f16ToFloat32 } from './half';
import { type SafetensorsEntry, READABLE_DTYPES, readSafetensorsHeader } from './safetensors-format';

/** Tensor data decoded from a file, in the tfjs dtype it will have. */
export interface DecodedTensor {
  dtype: 'float32' | 'int32' | 'bool';
  shape: number[];
  values: Float32Array | Int32Array | Uint8Array;
}

/** What {@link parseSafetensors} returns. The caller owns (and disposes) the tensors. */
export interface ParsedSafetensors {
  tensors: Record<string, tf.Tensor>;
  metadata: Record<string, string>;
}

/** Copies bytes [begin, end) into a fresh buffer, so typed-array views are aligned whatever the file's layout. */
function copyBytes(bytes: Uint8Array, begin: number, end: number): ArrayBuffer {
  const out = new Uint8Array(end - begin);
  out.set(bytes.subarray(begin, end));
  return out.buffer;
}

/**
 * Decodes one validated entry into a tfjs-compatible typed array. Half types widen to float32;
 * 8/16-bit and 64-bit integers become int32 (64-bit values outside int32 are an error, not a wrap);
 * F64 narrows to float32, tfjs having no float64.
 */
export function decodeEntry(bytes: Uint8Array, entry: SafetensorsEntry, file = '<memory>'): DecodedTensor {
  const { name, dtype, shape, begin, end } = entry;
  const buf = copyBytes(bytes, begin, end);
  switch (dtype) {
    case 'F32':
      return { dtype: 'float32', shape, values: new Float32Array(buf) };
    case 'F16':
      return { dtype: 'float32', shape, values: f16ToFloat32(new Uint16Array(buf)) };
    case 'BF16':
      return { dtype: 'float32', shape, values: bf16ToFloat32(new Uint16Array(buf)) };
    case 'F64':
      return { dtype: 'float32', shape, values: Float32Array.from(new Float64Array(buf)) };
    case 'I32':
      return { dtype: 'int32', shape, values: new Int32Array(buf) };
    case 'I16':
      return { dtype: 'int32', shape, values: Int32Array.from(new Int16Array(buf)) };
    case 'I8':
      return { dtype: 'int32', shape, values: Int32Array.from(new Int8Array(buf)) };
    case 'U8':
      return { dtype: 'int32', shape, values: Int32Array.from(new Uint8Array(buf)) };
    case 'BOOL':
      return { dtype: 'bool', shape, values: Uint8Array.from(new Uint8Array(buf), (v) => (v ? 1 : 0)) };
    case 'I64': {
      const src = new BigInt64Array(buf);
      const out = new Int32Array(src.length);
      for (let i = 0; i < src.length; i++) {
        const v = src[i] as bigint;
        if (v < -2147483648n || v > 2147483647n) {
          throw new SafetensorsError(
            { file, tensor: name, field: 'data' },
            `I64 value ${v} at index ${i} does not fit in int32, the widest integer tfjs has; keep such tensors out of the file or store them as F64`,
          );
        }
        out[i] = Number(v);
      }
      return { dtype: 'int32', shape, values: out };
    }
    default:
      throw new SafetensorsError(
        { file, tensor: name, field: 'dtype' },
        `dtype ${dtype} cannot be read into a tfjs tensor; readable dtypes are ${READABLE_DTYPES.join(', ')}`,
      );
  }
}

/**
 * Parses a safetensors buffer into tfjs tensors. Works in browsers and Node.
 * The whole file is validated before any tensor is created, and nothing is left allocated on error.
 *
 * @param bytes - the complete file
 * @param options.file - a name for error messages (defaults to `<memory>`)
 * @example
 * ```ts
 * import { parseSafetensors } from '@lora/tensor';
 * const { tensors, metadata } = parseSafetensors(new Uint8Array(await file.arrayBuffer()));
 * console.log(tensors['lm_head.weight']?.shape, metadata.format);
 * tf.dispose(Object.values(tensors));
 * ```
 */
export function parseSafetensors(bytes: Uint8Array, options: { file?: string } = {}): ParsedSafetensors {
  const file = options.file ?? '<memory>';
  const header = readSafetensorsHeader(bytes, file);
  const decoded = header.entries.map((entry) => [entry.name, decodeEntry(bytes, entry, file)] as const);
  // null-prototype: a tensor named `__proto__` (or `constructor`) is a key like any other
  const tensors: Record<string, tf.Tensor> = Object.create(null);
  try {
    for (const [name, d] of decoded) tensors[name] = tf.tensor(d.values, d.shape, d.dtype);
  } catch (e) {
    tf.dispose(Object.values(tensors));
    throw e;
  }
  return { tensors, metadata: header.metadata };
}
