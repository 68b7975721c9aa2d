import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { HalfEmbedding, HalfLinear, Linear, defaultHalfPacking, halfRowWords, isStoredWeightLayer } from '@lora/nn';
import { openFiles, parseSafetensors, serializeSafetensors } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { LlamaForCausalLM, planCheckpoint } from '@lora/models';

const FIXTURES = join(import.meta.dirname, '..', '__fixtures__');
/** A Hub cache written by Python's huggingface_hub (tools/oracle/hub_fixtures.py): tiny bf16 and f16 Llamas. */
const PY_CACHE = join(import.meta.dirname, '..', '..', 'tensor', '__fixtures__', 'hf-cache');
const offline = { cacheDir: PY_CACHE, localFilesOnly: true };

/** Bytes the model's own tensors hold on the backend (each distinct tensor once; tied weights count once). */
function modelBytes(model: LlamaForCausalLM): number {
  const seen = new Set<object>();
  let bytes = 0;
  for (const [, m] of model.namedModules())
    for (const [, p] of m.namedParameters('', false))
      if (!seen.has(p.dataId)) {
        seen.add(p.dataId);
        bytes += p.size * 4;
      }
  return bytes;
}

await describeEachBackend("weightStorage: 'checkpoint' keeps a bf16 / f16 checkpoint's weights 16-bit", () => {
  for (const dtype of ['bf16', 'f16'] as const) {
    const repo = `lora-test/tiny-llama-${dtype}`;

    it(`${dtype}: every weight decodes to torch's float32 upcast exactly; logits equal the float32-loaded model's`, async () => {
      const before = tf.memory().numTensors;
      const { tensors: want } = parseSafetensors(
        new Uint8Array(readFileSync(join(FIXTURES, 'half-dtypes.expected.safetensors'))),
      );
      const model = await LlamaForCausalLM.fromPretrained(repo, { ...offline, weightStorage: 'checkpoint' });
      const float = await LlamaForCausalLM.fromPretrained(repo, offline);
      model.eval();
      float.eval();
      let half = 0;
      for (const [path, m] of model.namedModules()) {
        if (!(m instanceof Linear || m instanceof HalfEmbedding)) continue;
        expect(m instanceof HalfLinear || m instanceof HalfEmbedding, path).toBe(true);
        const w = (m as HalfLinear | HalfEmbedding).decodeWeight();
        expect(
          maxRelativeError(await w.data(), await (want[`${dtype}.${path}.weight`] as tf.Tensor).data()),
          path,
        ).toBe(0);
        w.dispose();
        half++;
      }
      expect(half).toBe(2 * 7 + 2); // seven Linears a layer, the embedding and lm_head
      const ids = want.input_ids as tf.Tensor2D;
      const { logits } = model.forward(ids);
      const { logits: floatLogits } = float.forward(ids);
      expect(maxRelativeError(await logits.data(), await floatLogits.data())).toBeLessThan(1e-6);
      expect(maxRelativeError(await logits.data(), await (want[`${dtype}.logits`] as tf.Tensor).data())).toBeLessThan(
        1e-5,
      );
      // the fused-loss path (returnLogits: false) takes the general head with a 16-bit lm_head
      const { loss } = model.forward(ids, { labels: ids, returnLogits: false });
      const { loss: floatLoss } = float.forward(ids, { labels: ids, returnLogits: false });
      expect(Math.abs(((await loss.data())[0] as number) - ((await floatLoss.data())[0] as number))).toBeLessThan(1e-6);
      tf.dispose([logits, floatLogits, loss, floatLoss, ...Object.values(want)]);
      model.dispose();
      float.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });

    it(`${dtype}: the model holds the file's 16-bit bytes for its Linear and Embedding weights, float32 for the rest`, async () => {
      const plan = await planCheckpoint(await openFiles(repo, offline));
      let fileHalf = 0;
      let fileOther = 0;
      // what the backend's packing holds: the file's 2 bytes a value ('pairs'), or 3 bytes a 24-bit word on webgpu ('bytes')
      let storedHalf = 0;
      const packing = defaultHalfPacking();
      for (const [name, e] of plan.entries) {
        const n = e.shape.reduce((a, b) => a * b, 1);
        if (name.endsWith('norm.weight'))
          fileOther += 4 * n; // stays float32
        else {
          fileHalf += 2 * n;
          const cols = e.shape.at(-1) ?? 1;
          storedHalf += 4 * (n / cols) * halfRowWords(cols, packing);
        }
      }
      if (packing === 'pairs') expect(storedHalf).toBe(fileHalf);
      await plan.close();
      const bytes0 = tf.memory().numBytes;
      const model = await LlamaForCausalLM.fromPretrained(repo, { ...offline, weightStorage: 'checkpoint' });
      const held = tf.memory().numBytes - bytes0;
      // the packing's bytes for the 16-bit weights (the file's own where it is 'pairs': every row has an even length), float32 norms,
      // and the model's RoPE tables (cos, sin: [64 positions, head_dim 8] float32)
      expect(modelBytes(model)).toBe(storedHalf + fileOther);
      expect(held).toBe(storedHalf + fileOther + 2 * 64 * 8 * 4);
      const float = await LlamaForCausalLM.fromPretrained(repo, offline);
      expect(modelBytes(float)).toBe(2 * fileHalf + fileOther);
      // forward, backward and dispose leave nothing behind (the norms are the trainable float32 weights)
      const ids = tf.tensor2d([[1, 5, 9, 17, 33]], [1, 5], 'int32');
      tf.dispose(model.forward(ids).logits); // builds the RoPE rows for these positions (kept buffers)
      const before = tf.memory().numTensors;
      const { value, grads } = tf.variableGrads(() => model.forward(ids, { labels: ids }).loss as tf.Scalar);
      const names = Object.keys(grads);
      expect(names.length).toBe(2 * 2 + 1); // two norms a layer and the final norm: the codes get none
      tf.dispose([value, ...Object.values(grads)]);
      expect(tf.memory().numTensors).toBe(before);
      ids.dispose();
      model.dispose();
      float.dispose();
    });
  }

  it('a tied head shares the embedding codes (stored once) and decodes them when used', async () => {
    const dir = join(FIXTURES, 'llama-mha-tied');
    const { tensors } = parseSafetensors(new Uint8Array(readFileSync(join(dir, 'model.safetensors'))));
    const files: Record<string, Uint8Array> = {
      'config.json': new Uint8Array(readFileSync(join(dir, 'config.json'))),
      'model.safetensors': await serializeSafetensors(tensors, { dtype: 'BF16' }),
    };
    tf.dispose(Object.values(tensors));
    const model = await LlamaForCausalLM.fromPretrained(files, { weightStorage: 'checkpoint' });
    const float = await LlamaForCausalLM.fromPretrained(files);
    expect(model.lmHead).toBeInstanceOf(HalfLinear);
    expect(model.lmHead.weight).toBe(model.model.embedTokens.weight);
    const ids = tf.tensor2d([[3, 1, 4, 1, 5, 9, 2, 6]], [1, 8], 'int32');
    const { logits } = model.forward(ids);
    const { logits: want } = float.forward(ids);
    expect(maxRelativeError(await logits.data(), await want.data())).toBeLessThan(1e-6);
    tf.dispose([ids, logits, want]);
    model.dispose();
    float.dispose();
  });

  it('a float32 checkpoint stays float32 (the checkpoint keeps nothing 16-bit); an unknown option value is refused', async () => {
    const dir = join(FIXTURES, 'llama-gqa');
    const files = Object.fromEntries(
      readdirSync(dir)
        .filter((f) => f === 'config.json' || f === 'model.safetensors')
        .map((f) => [f, new Uint8Array(readFileSync(join(dir, f)))]),
    );
    const model = await LlamaForCausalLM.fromPretrained(files, { weightStorage: 'checkpoint' });
    expect([...model.namedModules()].some(([, m]) => isStoredWeightLayer(m))).toBe(false);
    model.dispose();
    await expect(LlamaForCausalLM.fromPretrained(files, { weightStorage: 'bf16' as never })).rejects.toThrow(
      `fromPretrained: weightStorage is "bf16"; use 'float32' (the default) or 'checkpoint' (keep BF16 / F16 weights 16-bit)`,
    );
  });
});
