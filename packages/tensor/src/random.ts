import * as tf from '@tensorflow/tfjs-core';

/**
 * A seeded random number generator that reproduces PyTorch's CPU generator: the same
 * Mersenne Twister (MT19937) seeded as `torch.manual_seed(seed)` seeds it, and the same
 * conversions to floats. Numbers are made in JavaScript, so they are the same on every backend.
 *
 * `rand` matches `torch.rand` / `Tensor.uniform_` on CPU bit for bit (float32);
 * `randn` matches `torch.randn` / `Tensor.normal_` to float32 rounding (PyTorch's own
 * `log`/`cos` may differ from JavaScript's in the last bit).
 *
 * @example
 * ```ts
 * const g = new Generator(0);             // torch.manual_seed(0)
 * const a = g.rand([8, 16], -0.25, 0.25); // torch.empty(8, 16).uniform_(-0.25, 0.25)
 * a.dispose();
 * ```
 */
export class Generator {
  private readonly mt = new Uint32Array(624);
  private index = 624;
  private nextNormal: number | null = null;

  constructor(seed = 0) {
    this.manualSeed(seed);
  }

  /** Reseeds, as `torch.manual_seed(seed)`. Seeds are taken modulo 2^32, as PyTorch's MT19937 does. */
  manualSeed(seed: number | bigint): this {
    const s = Number(BigInt.asUintN(32, BigInt(seed)));
    this.mt[0] = s;
    for (let i = 1; i < 624; i++) {
      const prev = this.mt[i - 1] as number;
      const x = prev ^ (prev >>> 30);
      // 1812433253 * x + i, modulo 2^32, without losing bits to float rounding.
      this.mt[i] = (Math.imul(1812433253, x) + i) >>> 0;
    }
    this.index = 624;
    this.nextNormal = null;
    return this;
  }

  private twist(): void {
    const mt = this.mt;
    // The three ranges of MT19937's recurrence, without a modulo per element.
    let i = 0;
    for (; i < 227; i++) {
      const y = ((mt[i] as number) & 0x80000000) | ((mt[i + 1] as number) & 0x7fffffff);
      mt[i] = (mt[i + 397] as number) ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
    }
    for (; i < 623; i++) {
      const y = ((mt[i] as number) & 0x80000000) | ((mt[i + 1] as number) & 0x7fffffff);
      mt[i] = (mt[i - 227] as number) ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
    }
    const y = ((mt[623] as number) & 0x80000000) | ((mt[0] as number) & 0x7fffffff);
    mt[623] = (mt[396] as number) ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
    this.index = 0;
  }

  /** The next 32 random bits, as an unsigned integer. */
  nextUint32(): number {
    if (this.index >= 624) this.twist();
    let y = this.mt[this.index++] as number;
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** A float32-grade uniform in [0, 1): 24 random bits, as PyTorch makes float uniforms. */
  nextFloat24(): number {
    return (this.nextUint32() & 0xffffff) * 2 ** -24;
  }

  /** A double-grade uniform in [0, 1): 53 bits of two draws (first draw high), as PyTorch makes double uniforms. */
  nextFloat53(): number {
    const hi = this.nextUint32();
    const lo = this.nextUint32();
    // (hi << 32 | lo) masked to 53 bits: the low 21 bits of hi, then lo.
    return ((hi & 0x1fffff) * 2 ** 32 + lo) * 2 ** -53;
  }

  /**
   * Fills `out` with uniforms in [low, high), in PyTorch's order and arithmetic: the bounds are
   * float32, `high − low` is a float32 difference, and `u·(high − low) + low` is computed in double
   * and rounded once (PyTorch's CPU accumulation type for float).
   */
  fillUniform(out: Float32Array, low = 0, high = 1): Float32Array {
    const f = Math.fround;
    const lo = f(low);
    const range = f(f(high) - lo);
    const mt = this.mt;
    const n = out.length;
    let i = 0;
    // nextFloat24 inlined, a twist at a time (this runs for every weight a model draws).
    while (i < n) {
      if (this.index >= 624) this.twist();
      let k = this.index;
      const end = Math.min(n, i + (624 - k));
      for (; i < end; i++, k++) {
        let y = mt[k] as number;
        y ^= y >>> 11;
        y ^= (y << 7) & 0x9d2c5680;
        y ^= (y << 15) & 0xefc60000;
        y ^= y >>> 18;
        out[i] = f((y & 0xffffff) * 5.9604644775390625e-8 * range + lo);
      }
      this.index = k;
    }
    return out;
  }

  /**
   * Fills `out` with normals, as PyTorch's CPU `normal_` does: for 16 or more values, uniforms
   * paired by Box–Muller in blocks of 16 (the last block recomputed over the final 16);
   * for fewer, one double-precision Box–Muller pair per two values.
   */
  fillNormal(out: Float32Array, mean = 0, std = 1): Float32Array {
    const n = out.length;
    if (n >= 16) {
      this.fillUniform(out);
      for (let i = 0; i + 16 <= n; i += 16) normal16(out, i, mean, std);
      if (n % 16 !== 0) {
        const tail = out.subarray(n - 16);
        this.fillUniform(tail);
        normal16(out, n - 16, mean, std);
      }
      return out;
    }
    for (let i = 0; i < n; i++) out[i] = this.normalScalar() * std + mean;
    return out;
  }

  /**
   * Fills a Float64Array with normals as PyTorch's CPU `normal_` does for float64 tensors: for 16 or
   * more values, 53-bit uniforms paired by Box–Muller in blocks of 16 in double precision; for fewer,
   * the same scalar path as {@link fillNormal}.
   */
  fillNormal64(out: Float64Array, mean = 0, std = 1): Float64Array {
    const n = out.length;
    if (n < 16) {
      for (let i = 0; i < n; i++) out[i] = this.normalScalar() * std + mean;
      return out;
    }
    for (let i = 0; i < n; i++) out[i] = this.nextFloat53();
    for (let i = 0; i + 16 <= n; i += 16) normal16Double(out, i, mean, std);
    if (n % 16 !== 0) {
      for (let i = n - 16; i < n; i++) out[i] = this.nextFloat53();
      normal16Double(out, n - 16, mean, std);
    }
    return out;
  }

  private normalScalar(): number {
    if (this.nextNormal !== null) {
      const v = this.nextNormal;
      this.nextNormal = null;
      return v;
    }
    const u1 = this.nextFloat53();
    const u2 = this.nextFloat53();
    const r = Math.sqrt(-2 * Math.log1p(-u2));
    const theta = 2 * Math.PI * u1;
    this.nextNormal = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /**
   * A float32 tensor of uniforms in [low, high), as `torch.empty(shape).uniform_(low, high)`.
   *
   * @example
   * ```ts
   * const x = new Generator(42).rand([2, 3]); // torch.manual_seed(42); torch.rand(2, 3)
   * ```
   */
  rand(shape: number[], low = 0, high = 1): tf.Tensor {
    return tf.tensor(this.fillUniform(new Float32Array(sizeOf(shape)), low, high), shape, 'float32');
  }

  /**
   * A float32 tensor of normals, as `torch.empty(shape).normal_(mean, std)`.
   *
   * @example
   * ```ts
   * const x = new Generator(0).randn([4, 4]); // torch.manual_seed(0); torch.randn(4, 4)
   * ```
   */
  randn(shape: number[], mean = 0, std = 1): tf.Tensor {
    return tf.tensor(this.fillNormal(new Float32Array(sizeOf(shape)), mean, std), shape, 'float32');
  }
}

function sizeOf(shape: number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0)
      throw new RangeError(`shape ${JSON.stringify(shape)} must hold non-negative integers`);
    n *= d;
  }
  return n;
}

/** Box–Muller over one block of 16 uniforms: pairs (j, j + 8), in float32 as PyTorch computes it. */
function normal16(data: Float32Array, at: number, mean: number, std: number): void {
  const f = Math.fround;
  for (let j = 0; j < 8; j++) {
    const u1 = f(1 - (data[at + j] as number));
    const u2 = data[at + j + 8] as number;
    const radius = f(Math.sqrt(f(-2 * f(Math.log(u1)))));
    const theta = f(f(2 * Math.PI) * u2);
    data[at + j] = f(f(radius * f(Math.cos(theta))) * f(std)) + mean;
    data[at + j + 8] = f(f(radius * f(Math.sin(theta))) * f(std)) + mean;
  }
}

/** Box–Muller over one block of 16 uniforms in double precision (PyTorch's float64 path). */
function normal16Double(data: Float64Array, at: number, mean: number, std: number): void {
  for (let j = 0; j < 8; j++) {
    const u1 = 1 - (data[at + j] as number);
    const u2 = data[at + j + 8] as number;
    const radius = Math.sqrt(-2 * Math.log(u1));
    const theta = 2 * Math.PI * u2;
    data[at + j] = radius * Math.cos(theta) * std + mean;
    data[at + j + 8] = radius * Math.sin(theta) * std + mean;
  }
}
