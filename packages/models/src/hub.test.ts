import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { type DownloadProgress, initBackend, openFiles, parseSafetensors } from '@lora/tensor';
import { maxRelativeError, startFakeHub } from '@lora/tensor/testing';
import { LlamaForCausalLM, loadTokenizer, planCheckpoint } from '@lora/models';

const FIXTURES = join(import.meta.dirname, '..', '__fixtures__');
/** A Hub cache written by Python's huggingface_hub (tools/oracle/hub_fixtures.py). */
const PY_CACHE = join(import.meta.dirname, '..', '..', 'tensor', '__fixtures__', 'hf-cache');
const tokenizerSummary = JSON.parse(readFileSync(join(FIXTURES, 'expected.json'), 'utf8')).tokenizer as {
  text: string;
  ids: number[];
}[];
const noNetwork = vi.fn(async (): Promise<Response> => {
  throw new Error('the network was used');
});
const offline = { cacheDir: PY_CACHE, localFilesOnly: true, fetch: noNetwork };

beforeAll(async () => {
  await initBackend('cpu');
});

describe('bf16 and f16 checkpoints from the Hub cache Python wrote, computed in float32', () => {
  for (const dtype of ['bf16', 'f16']) {
    it(`${dtype}: weights are torch's float32 upcast exactly, logits match transformers' float32 model (1e-5)`, async () => {
      const before = tf.memory().numTensors;
      const repo = `lora-test/tiny-llama-${dtype}`;
      const files = await openFiles(repo, offline);
      const plan = await planCheckpoint(files);
      expect(new Set([...plan.entries.values()].map((e) => e.dtype))).toEqual(new Set([dtype.toUpperCase()]));
      await plan.close();
      const model = await LlamaForCausalLM.fromPretrained(repo, offline);
      model.eval();
      const { tensors: want } = parseSafetensors(
        new Uint8Array(readFileSync(join(FIXTURES, 'half-dtypes.expected.safetensors'))),
      );
      const weights = model.stateDict();
      for (const [name, w] of Object.entries(weights)) {
        const expected = want[`${dtype}.${name}`];
        expect(expected, name).toBeDefined();
        expect(w.dtype).toBe('float32');
        expect(maxRelativeError(await w.data(), await (expected as tf.Tensor).data()), name).toBe(0);
      }
      const { logits } = model.forward(want.input_ids as tf.Tensor2D);
      expect(maxRelativeError(await logits.data(), await (want[`${dtype}.logits`] as tf.Tensor).data())).toBeLessThan(
        1e-5,
      );
      const tok = await loadTokenizer(repo, offline);
      for (const { text, ids } of tokenizerSummary) expect(tok.encode(text).ids, text).toEqual(ids);
      tf.dispose([logits, ...Object.values(want)]);
      model.dispose();
      expect(tf.memory().numTensors).toBe(before);
      expect(noNetwork).not.toHaveBeenCalled();
    });
  }
});

describe('fromPretrained and loadTokenizer with a Hub repo id, downloading', () => {
  let cache: string | undefined;
  afterEach(async () => {
    if (cache && cache !== process.env.LORA_HUB_CACHE_DIR) await rm(cache, { recursive: true, force: true });
  });

  it('downloads a sharded checkpoint into the cache with progress, then loads offline', async () => {
    const dir = join(FIXTURES, 'llama-attention-bias-sharded');
    const files = Object.fromEntries(readdirSync(dir).map((f) => [f, new Uint8Array(readFileSync(join(dir, f)))]));
    const tokDir = join(FIXTURES, 'tokenizer');
    for (const f of readdirSync(tokDir)) files[f] = new Uint8Array(readFileSync(join(tokDir, f)));
    const hub = await startFakeHub([{ id: 'lora-test/sharded', files }]);
    // LORA_HUB_CACHE_DIR keeps the cache for tools/oracle/check_hub_cache.py (Python reads what we wrote)
    cache = process.env.LORA_HUB_CACHE_DIR ?? (await mkdtemp(join(tmpdir(), 'lora-models-hub-')));
    try {
      const progress: DownloadProgress[] = [];
      const fromHub = await LlamaForCausalLM.fromPretrained('lora-test/sharded', {
        cacheDir: cache,
        hubUrl: hub.url,
        onProgress: (p) => progress.push(p),
      });
      const done = progress.filter((p) => p.done).map((p) => p.file);
      expect(done.sort()).toEqual(
        ['config.json', 'model.safetensors.index.json', ...Object.keys(files).filter((f) => f.includes('-of-'))].sort(),
      );
      // expected.safetensors, the tokenizer and generation_config.json were not needed, so not downloaded
      expect(hub.requests.some((r) => r.url.endsWith('expected.safetensors'))).toBe(false);
      const fromDir = await LlamaForCausalLM.fromPretrained(dir);
      const a = fromHub.stateDict();
      const b = fromDir.stateDict();
      for (const k of Object.keys(b)) expect(maxRelativeError(await a[k]!.data(), await b[k]!.data()), k).toBe(0);
      const tok = await loadTokenizer('lora-test/sharded', { cacheDir: cache, hubUrl: hub.url });
      expect(tok.encode(tokenizerSummary[0]!.text).ids).toEqual(tokenizerSummary[0]!.ids);
      const again = await LlamaForCausalLM.fromPretrained('lora-test/sharded', {
        cacheDir: cache,
        localFilesOnly: true,
        fetch: noNetwork,
      });
      expect(noNetwork).not.toHaveBeenCalled();
      for (const m of [fromHub, fromDir, again]) m.dispose();
    } finally {
      await hub.close();
    }
  });

  it('says where it looked when a repo id is neither a directory nor cached, offline', async () => {
    cache = await mkdtemp(join(tmpdir(), 'lora-models-hub-'));
    const err = await LlamaForCausalLM.fromPretrained('lora-test/absent', {
      cacheDir: cache,
      localFilesOnly: true,
    }).catch((e) => e);
    expect(err.name).toBe('HubError');
    expect(err.message).toContain(join(cache, 'models--lora-test--absent'));
    await expect(LlamaForCausalLM.fromPretrained('./no/such/dir')).rejects.toThrow(/does not exist/);
  });
});
