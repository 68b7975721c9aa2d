import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { requireChromium, runInChromium } from '@lora/tensor/testing';
import type { SmokeResult } from '../browser/smoke';

const here = import.meta.dirname;
// on CI a missing Chromium is a failure (.ci/run installs it), elsewhere the suite is skipped with a message
const withChromium = requireChromium();

describe.skipIf(!withChromium)('@lora/core in a browser bundle (headless Chromium)', () => {
  it("loads a PEFT adapter from in-memory files with PEFT's output, merges safely, trains, and round-trips in memory, on cpu and webgpu", async () => {
    const { result, logs } = await runInChromium<{ results: SmokeResult[]; errors: string[] }>({
      entry: join(here, '..', 'browser', 'smoke.ts'),
      serve: { '/fixtures/': join(here, '..', '__fixtures__') },
    });
    console.log(
      JSON.stringify(
        result.results.map((r) => ({
          backend: r.backend,
          output: r.outputRelErr,
          merged: r.mergedRelErr,
          pruneMismatches: r.pruneMismatches,
        })),
      ),
    );
    expect(
      result.results.find((r) => r.backend === 'cpu'),
      `${result.errors.join('; ')}\n${logs.join('\n')}`,
    ).toBeDefined();
    for (const r of result.results) {
      expect(r.outputRelErr, r.backend).toBeLessThan(1e-5);
      expect(r.mergedRelErr, r.backend).toBeLessThan(1e-5);
      expect(r.lossLast, r.backend).toBeLessThan(r.lossFirst);
      expect(r.reloadRelErr, r.backend).toBeLessThan(1e-6);
      expect(r.pruneMismatches, r.backend).toBe(0);
      expect(r.leaked, r.backend).toBe(0);
    }
    // a backend that started must not fail; only webgpu may be missing (no adapter in this browser)
    expect(
      result.errors.filter((e) => !e.startsWith("webgpu: backend 'webgpu' is not available")),
      logs.join('\n'),
    ).toEqual([]);
    // webgpu needs an adapter (SwiftShader with --enable-unsafe-webgpu); it is reported, not required
    if (!result.results.some((r) => r.backend === 'webgpu'))
      console.warn(`[browser test] webgpu did not run: ${result.errors.join('; ')}`);
  }, 300_000);
});
