import type { Module } from '@lora/nn';

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

function fmix(h: number): number {
  let x = h ^ (h >>> 16);
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/**
 * A 64-bit fingerprint of 32-bit words: two MurmurHash3 (x86, 32-bit) lanes with different seeds,
 * updated incrementally. It tells one set of weights from another (a cache made for another
 * checkpoint); it is not a cryptographic hash.
 */
export class WordHash {
  private h1 = 0x9747b28c;
  private h2 = 0x2f1a7c33;
  private words = 0;

  /** Adds 32-bit words (a float32 tensor's bit patterns). */
  update(data: Uint32Array): this {
    let h1 = this.h1;
    let h2 = this.h2;
    for (let i = 0; i < data.length; i++) {
      let k = Math.imul(data[i] as number, C1);
      k = (k << 15) | (k >>> 17);
      k = Math.imul(k, C2);
      h1 ^= k;
      h1 = (h1 << 13) | (h1 >>> 19);
      h1 = (Math.imul(h1, 5) + 0xe6546b64) | 0;
      h2 ^= k;
      h2 = (h2 << 17) | (h2 >>> 15);
      h2 = (Math.imul(h2, 9) + 0x38b34ae5) | 0;
    }
    this.h1 = h1;
    this.h2 = h2;
    this.words += data.length;
    return this;
  }

  /** Adds a string (a name, a shape) as its UTF-16 code units. */
  updateString(s: string): this {
    const words = new Uint32Array(s.length + 1);
    for (let i = 0; i < s.length; i++) words[i] = s.charCodeAt(i);
    words[s.length] = 0xffffffff; // a separator, so that 'ab' + 'c' differs from 'a' + 'bc'
    return this.update(words);
  }

  /** 16 hex digits. */
  digest(): string {
    const n = this.words >>> 0;
    const a = fmix((this.h1 ^ n) >>> 0);
    const b = fmix((this.h2 ^ n ^ a) >>> 0);
    return a.toString(16).padStart(8, '0') + b.toString(16).padStart(8, '0');
  }
}

/**
 * A fingerprint of every parameter of `model`, by dotted name: its shape and the bit patterns of its
 * values (read one parameter at a time, so memory stays near the largest one).
 */
export async function hashParameters(model: Module): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [name, p] of model.namedParameters()) {
    const values = await p.data();
    const h = new WordHash().updateString(`${p.dtype}[${p.shape.join(',')}]`);
    h.update(
      values instanceof Uint8Array
        ? Uint32Array.from(values)
        : new Uint32Array(values.buffer, values.byteOffset, values.length),
    );
    out[name] = h.digest();
  }
  return out;
}
