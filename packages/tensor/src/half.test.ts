import { describe, expect, it } from 'vitest';
import { bf16ToFloat32, f16BitsToNumber, float32ToBf16, float32ToF16, numberToF16Bits } from '@lora/tensor';

describe('f16 codec', () => {
  it('decodes every one of the 65536 bit patterns and encodes each finite value back to itself', () => {
    for (let h = 0; h < 65536; h++) {
      const v = f16BitsToNumber(h);
      const exp = (h >> 10) & 0x1f;
      if (exp === 0x1f && (h & 0x3ff) !== 0) {
        expect(Number.isNaN(v)).toBe(true);
        expect(Number.isNaN(f16BitsToNumber(numberToF16Bits(v)))).toBe(true);
      } else {
        expect(numberToF16Bits(v)).toBe(h);
      }
    }
  });

  it('rounds to nearest even between neighbours, overflows to Inf, underflows to signed zero', () => {
    expect(numberToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie -> even (1.0)
    expect(numberToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie -> even (1 + 2^-9)
    expect(numberToF16Bits(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01); // above the tie
    expect(numberToF16Bits(65520)).toBe(0x7c00); // rounds past the largest finite value
    expect(numberToF16Bits(65519)).toBe(0x7bff);
    expect(numberToF16Bits(2 ** -25)).toBe(0); // half the smallest subnormal: tie -> even (0)
    expect(numberToF16Bits(-(2 ** -25) * 1.5)).toBe(0x8001);
    expect(numberToF16Bits(2 ** -24 * 1.5)).toBe(0x0002); // subnormal tie -> even
    expect(numberToF16Bits(-0)).toBe(0x8000);
    expect(numberToF16Bits(1e-10)).toBe(0);
  });

  it('encodes arrays as the scalar codec does', () => {
    const x = new Float32Array([0.1, -3.5, 1e5, 6e-8]);
    expect(Array.from(float32ToF16(x))).toEqual(Array.from(x, numberToF16Bits));
  });
});

describe('bf16 codec', () => {
  it('rounds float32 to nearest even and keeps NaN a NaN', () => {
    const bits = (u: number) => new Float32Array(new Uint32Array([u]).buffer)[0] as number;
    const x = new Float32Array([
      1,
      bits(0x3f808000),
      bits(0x3f818000),
      bits(0x3f808001),
      Number.NaN,
      bits(0x7fc00001),
      -0,
      Number.POSITIVE_INFINITY,
      bits(0x7f7fffff),
    ]);
    const out = float32ToBf16(x);
    expect(Array.from(out)).toEqual([0x3f80, 0x3f80, 0x3f82, 0x3f81, 0x7fc0, 0x7fc0, 0x8000, 0x7f80, 0x7f80]);
    const back = bf16ToFloat32(out);
    expect(back[0]).toBe(1);
    expect(Number.isNaN(back[4])).toBe(true);
    expect(Object.is(back[6], -0)).toBe(true);
  });
});
