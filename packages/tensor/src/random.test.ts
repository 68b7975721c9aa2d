import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Generator } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';

interface Case {
  seed: number;
  n: number;
  rand: number[];
  randn: number[];
  randn_float64: number[];
  'uniform_-0.3_0.7': number[];
  'normal_2_0.5': number[];
}
const fixture = JSON.parse(
  readFileSync(join(import.meta.dirname, '..', '__fixtures__', 'torch-random.json'), 'utf8'),
) as {
  torch: string;
  cases: Case[];
  sequence_seed3: number[][];
};

describe(`Generator against torch ${fixture.torch}'s CPU generator`, () => {
  for (const c of fixture.cases) {
    it(`seed ${c.seed}, ${c.n} values: rand and uniform_ bit for bit, randn and normal_ to float32 rounding, float64 randn to 1e-14`, () => {
      const g = new Generator(c.seed);
      expect(Array.from(g.fillUniform(new Float32Array(c.n)))).toEqual(c.rand);
      expect(Array.from(g.manualSeed(c.seed).fillUniform(new Float32Array(c.n), -0.3, 0.7))).toEqual(
        c['uniform_-0.3_0.7'],
      );
      expect(maxRelativeError(g.manualSeed(c.seed).fillNormal(new Float32Array(c.n)), c.randn)).toBeLessThan(1e-6);
      expect(
        maxRelativeError(g.manualSeed(c.seed).fillNormal(new Float32Array(c.n), 2, 0.5), c['normal_2_0.5']),
      ).toBeLessThan(1e-6);
      expect(maxRelativeError(g.manualSeed(c.seed).fillNormal64(new Float64Array(c.n)), c.randn_float64)).toBeLessThan(
        1e-14,
      );
    });
  }

  it('carries its state across calls as torch does', () => {
    const g = new Generator(3);
    const [a, b, c, d] = fixture.sequence_seed3 as [number[], number[], number[], number[]];
    expect(Array.from(g.fillUniform(new Float32Array(7)))).toEqual(a);
    expect(maxRelativeError(g.fillNormal(new Float32Array(20)), b)).toBeLessThan(1e-6);
    expect(maxRelativeError(g.fillNormal(new Float32Array(3)), c)).toBeLessThan(1e-6);
    expect(Array.from(g.fillUniform(new Float32Array(2)))).toEqual(d);
  });

  it('fills in bulk exactly as it draws one number at a time, across twists and after odd offsets', () => {
    for (const [seed, skip, n] of [
      [0, 0, 2000],
      [7, 5, 623],
      [123, 623, 1249],
      [2 ** 31 + 9, 1, 5000],
    ] as const) {
      const bulk = new Generator(seed);
      const scalar = new Generator(seed);
      for (let i = 0; i < skip; i++) expect(bulk.nextUint32()).toBe(scalar.nextUint32());
      const got = bulk.fillUniform(new Float32Array(n), -0.5, 0.25);
      const lo = Math.fround(-0.5);
      const range = Math.fround(Math.fround(0.25) - lo);
      const want = Float32Array.from({ length: n }, () => Math.fround(scalar.nextFloat24() * range + lo));
      expect(got).toEqual(want);
      expect(bulk.nextUint32()).toBe(scalar.nextUint32());
    }
  });

  it('rejects shapes that are not lists of non-negative integers', () => {
    expect(() => new Generator(0).rand([2, -1])).toThrow(/shape \[2,-1\] must hold non-negative integers/);
  });
});
