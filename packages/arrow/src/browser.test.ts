import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { requireChromium, runInChromium } from '@lora/tensor/testing';
import type { SmokeResult } from '../browser/smoke';

const here = import.meta.dirname;
// on CI a missing Chromium is a failure (.ci/run installs it), elsewhere the suite is skipped with a message
const withChromium = requireChromium();

describe.skipIf(!withChromium)('@lora/arrow in a browser bundle (headless Chromium)', () => {
  it("routes over adapters given as in-memory files with PEFT's logits, on cpu and webgpu", async () => {
    const { result, logs } = await runInChromium<{ results: SmokeResult[]; errors: string[] }>({
      entry: join(here, '..', 'browser', 'smoke.ts'),
      serve: { '/fixtures/': join(here, '..', '__fixtures__') },
    });
    console.log(JSON.stringify(result.results));
    expect(
      result.results.find((r) => r.backend === 'cpu'),
      `${result.errors.join('; ')}\n${logs.join('\n')}`,
    ).toBeDefined();
    for (const r of result.results) {
      expect(r.powerRelErr, r.backend).toBeLessThan(1e-5);
      expect(r.exactRelErr, r.backend).toBeLessThan(1e-5);
      expect(r.leaked, r.backend).toBe(0);
    }
    expect(
      result.errors.filter((e) => !e.startsWith("webgpu: backend 'webgpu' is not available")),
      logs.join('\n'),
    ).toEqual([]);
    if (!result.results.some((r) => r.backend === 'webgpu'))
      console.warn(`[browser test] webgpu did not run: ${result.errors.join('; ')}`);
  }, 300_000);
});
