import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { initBackend, parseSafetensors } from '@lora/tensor';
import { maxRelativeError, startFakeHub } from '@lora/tensor/testing';
import { FIX, baseNet } from '../fixture-nets.test-util';
import { loadAdapter } from '@lora/core';

/** A Hub cache written by Python's huggingface_hub (tools/oracle/hub_fixtures.py), holding peft-qv as lora-test/peft-qv. */
const PY_CACHE = join(import.meta.dirname, '..', '..', '..', 'tensor', '__fixtures__', 'hf-cache');
const noNetwork = vi.fn(async (): Promise<Response> => {
  throw new Error('the network was used');
});
let expected: Record<string, tf.Tensor>;

beforeAll(async () => {
  await initBackend('cpu');
  expected = parseSafetensors(new Uint8Array(readFileSync(join(FIX, 'expected.safetensors')))).tensors;
});
afterAll(() => tf.dispose(Object.values(expected)));

/** The adapter's output on the fixture input against PEFT's. */
async function outputError(peft: { call(x: tf.Tensor): unknown; eval(): unknown }) {
  peft.eval();
  const y = peft.call(expected.x as tf.Tensor) as tf.Tensor;
  const err = maxRelativeError(await y.data(), await (expected['peft-qv.out'] as tf.Tensor).data());
  y.dispose();
  return err;
}

describe('loadAdapter with a Hub repo id', () => {
  it('reads the adapter from a Hub cache huggingface_hub wrote, offline, with PEFT outputs', async () => {
    const before = tf.memory().numTensors;
    const { model, missingKeys, unexpectedKeys } = await loadAdapter(baseNet(), 'lora-test/peft-qv', {
      cacheDir: PY_CACHE,
      localFilesOnly: true,
      fetch: noNetwork,
    });
    expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
    expect(await outputError(model)).toBeLessThan(1e-5);
    model.dispose();
    expect(tf.memory().numTensors).toBe(before);
    expect(noNetwork).not.toHaveBeenCalled();
  });

  it('downloads it into the cache from a Hub-shaped server, then needs no network', async () => {
    const dir = join(FIX, 'peft-qv');
    const files = Object.fromEntries(readdirSync(dir).map((f) => [f, new Uint8Array(readFileSync(join(dir, f)))]));
    const hub = await startFakeHub([{ id: 'someone/qv-adapter', files, refs: ['main', 'v1'] }]);
    const cache = await mkdtemp(join(tmpdir(), 'lora-core-hub-'));
    try {
      const first = await loadAdapter(baseNet(), 'someone/qv-adapter', {
        cacheDir: cache,
        hubUrl: hub.url,
        revision: 'v1',
      });
      expect(await outputError(first.model)).toBeLessThan(1e-5);
      first.model.dispose();
      const second = await loadAdapter(baseNet(), 'someone/qv-adapter', {
        cacheDir: cache,
        revision: 'v1',
        localFilesOnly: true,
        fetch: noNetwork,
      });
      expect(await outputError(second.model)).toBeLessThan(1e-5);
      second.model.dispose();
      expect(noNetwork).not.toHaveBeenCalled();
      await expect(
        loadAdapter(baseNet(), 'someone/qv-adapter', { cacheDir: cache, localFilesOnly: true }),
      ).rejects.toMatchObject({ name: 'HubError', code: 'not-cached' }); // main was never resolved here
    } finally {
      await hub.close();
      await rm(cache, { recursive: true, force: true });
    }
  });
});
