import { describe, expect, it } from 'vitest';
import { readJson } from './eva-nets.test-util';
import { rankDistribution, roundHalfEven, torchArgsortDescending } from './rank-distribution';

describe('roundHalfEven', () => {
  it("rounds halves to even as Python's round()", () => {
    expect([0.5, 1.5, 2.5, 3.5, 4.5, -0.5, -1.5].map(roundHalfEven)).toEqual([0, 2, 2, 4, 4, 0, -2]);
    expect([2.4999999, 2.5000001, 7, 8 * 1.3125, 4 * 1.5].map(roundHalfEven)).toEqual([2, 3, 7, 10, 6]);
    // the exact binary value decides: just above a half rounds up
    expect(roundHalfEven(0.5 + 2 ** -52)).toBe(1);
  });
});

describe('torchArgsortDescending', () => {
  it("reproduces torch's CPU argsort(descending=True) order on tie-heavy arrays (fixture)", () => {
    const cases = readJson<{ values: number[]; order: number[] }[]>('torch-argsort.json');
    expect(cases.length).toBeGreaterThan(10);
    for (const c of cases) expect(torchArgsortDescending(c.values)).toEqual(c.order);
  });

  it('puts NaN first and sorts distinct values descending', () => {
    expect(torchArgsortDescending([1, Number.NaN, 3, 2])).toEqual([1, 2, 3, 0]);
    const v = Array.from({ length: 200 }, (_, i) => Math.sin(i * 7.3));
    const order = torchArgsortDescending(v);
    for (let i = 1; i < order.length; i++)
      expect(v[order[i - 1] as number]).toBeGreaterThanOrEqual(v[order[i] as number] as number);
  });

  it('sorts an adversarial (median-of-three killer) array, deep in the recursion', () => {
    // a median-of-three killer makes the recursion reach its depth limit
    const n = 512;
    const v = Array.from({ length: n }, (_, i) => (i % 2 === 0 ? i : n - i));
    const order = torchArgsortDescending(v);
    expect(new Set(order).size).toBe(n);
    for (let i = 1; i < n; i++)
      expect(v[order[i - 1] as number]).toBeGreaterThanOrEqual(v[order[i] as number] as number);
  });
});

describe('rankDistribution', () => {
  it('shares the budget by explained variance, duplicating equal-input members, hooks holding the larger count', () => {
    const evr = new Map<string, number[]>([
      ['a', [0.9, 0.05, 0.01, 0.001]],
      ['b', [0.3, 0.2, 0.15, 0.1]],
    ]);
    const ranks = rankDistribution({
      layerHookMap: [
        ['a', 'a'],
        ['b', 'b'],
        ['c', 'b'],
      ],
      explainedVarianceRatio: evr,
      maxComponents: new Map([
        ['a', 4],
        ['b', 4],
        ['c', 4],
      ]),
      budget: 6,
    });
    // pool: a .9 .05 .01 .001, b .3 .2 .15 .1, c .3 .2 .15 .1: the top 6 are .9, .3, .3, .2, .2, .15
    expect([...ranks]).toEqual([
      ['a', 1],
      ['b', 3],
      ['c', 2],
    ]);
  });

  it('gives PEFT its rank 0 for layers with no value in the budget', () => {
    const ranks = rankDistribution({
      layerHookMap: [
        ['a', 'a'],
        ['b', 'b'],
      ],
      explainedVarianceRatio: new Map([
        ['a', [0.9, 0.8]],
        ['b', [0.01, 0.001]],
      ]),
      maxComponents: new Map([
        ['a', 2],
        ['b', 2],
      ]),
      budget: 2,
    });
    expect(Object.fromEntries(ranks)).toEqual({ a: 2, b: 0 });
  });
});
