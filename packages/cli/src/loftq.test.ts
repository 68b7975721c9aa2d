import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { runCli } from '@lora/cli';
import { loadAdapter, loraConfigFromJson } from '@lora/core';
import { loftqInit } from '@lora/loftq';
import { Linear, Module, ModuleList, withoutInit } from '@lora/nn';
import {
  float32ToBf16,
  initBackend,
  parseSafetensors,
  readSafetensorsHeader,
  serializeSafetensors,
} from '@lora/tensor';
import { beforeAll, describe, expect, it } from 'vitest';

const read = (p: string) => parseSafetensors(new Uint8Array(readFileSync(p))).tensors;

async function run(...argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCli(argv, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

/** Deterministic values: a 32-bit LCG, scale·(2u − 1). */
function values(n: number, seed: number, scale: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(1664525, s) + 1013904223) >>> 0;
    return scale * (2 * (s / 2 ** 32) - 1);
  });
}

/** A Llama-shaped checkpoint: two layers of q/k/v/o projections and an MLP, an embedding, a norm, lm_head. */
const SHAPES: Record<string, number[]> = {
  'model.embed_tokens.weight': [50, 32],
  'model.norm.weight': [32],
  'lm_head.weight': [50, 32],
};
for (const l of [0, 1]) {
  for (const p of ['q_proj', 'k_proj', 'v_proj', 'o_proj'])
    SHAPES[`model.layers.${l}.self_attn.${p}.weight`] = [32, 32];
  SHAPES[`model.layers.${l}.mlp.up_proj.weight`] = [64, 32];
  SHAPES[`model.layers.${l}.mlp.down_proj.weight`] = [32, 64];
}

async function checkpoint(dtype: 'F32' | 'BF16' = 'F32', sharded = false): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'lora-loftq-base-'));
  const tensors = Object.fromEntries(
    Object.entries(SHAPES).map(([name, shape], i) => [
      name,
      tf.tensor(
        values(
          shape.reduce((a, b) => a * b),
          i + 1,
          0.1,
        ),
        shape,
      ),
    ]),
  );
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ model_type: 'llama', hidden_size: 32 }));
  writeFileSync(join(dir, 'tokenizer.json'), '{"model": {}}');
  const encode = async (part: Record<string, tf.Tensor>) =>
    serializeSafetensors(part, { metadata: { format: 'pt' }, dtype });
  if (!sharded) writeFileSync(join(dir, 'model.safetensors'), await encode(tensors));
  else {
    const names = Object.keys(tensors);
    const weightMap: Record<string, string> = {};
    for (const [i, part] of [names.slice(0, 8), names.slice(8)].entries()) {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      writeFileSync(join(dir, file), await encode(Object.fromEntries(part.map((n) => [n, tensors[n] as tf.Tensor]))));
      for (const n of part) weightMap[n] = file;
    }
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  }
  tf.dispose(Object.values(tensors));
  return dir;
}

beforeAll(async () => {
  await initBackend('cpu');
});

describe('lora loftq', () => {
  it('writes the LoftQ base and the adapter as loftqInit computes them; other tensors and files unchanged', async () => {
    const base = await checkpoint();
    const out = join(mkdtempSync(join(tmpdir(), 'lora-loftq-out-')), 'llama-4bit');
    const r = await run('loftq', '--base', base, '--out', out, '--rank', '4', '--bits', '4', '--iter', '2');
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/LoftQ on 4 weights of .*: 4 bits, rank 4, 2 steps, alpha 4/);
    expect(r.err).toMatch(
      /\[1\/4\] model\.layers\.0\.self_attn\.q_proj \[32, 32\]: \|\|W - Q - BA\|\| \/ \|\|W\|\| = 0\.\d{5}/,
    );
    expect(readdirSync(out).sort()).toEqual(['config.json', 'loftq_init', 'model.safetensors', 'tokenizer.json']);
    // an earlier output of lora loftq is replaced with --force, and only with it
    expect((await run('loftq', '--base', base, '--out', out, '--rank', '4')).err).toMatch(/exists/);
    const again = await run('loftq', '--base', base, '--out', out, '--rank', '4', '--iter', '2', '--force');
    expect(again.code, again.err).toBe(0);
    expect(again.err).toMatch(/the old output replaced/);
    expect(readdirSync(dirname(out))).toEqual(['llama-4bit']);
    const before = read(join(base, 'model.safetensors'));
    const after = read(join(out, 'model.safetensors'));
    const adapter = read(join(out, 'loftq_init', 'adapter_model.safetensors'));
    const config = loraConfigFromJson(JSON.parse(readFileSync(join(out, 'loftq_init', 'adapter_config.json'), 'utf8')));
    expect(config.initLoraWeights).toBe(true);
    expect(config.r).toBe(4);
    expect(config.loraAlpha).toBe(4);
    expect(config.targetModules).toEqual(['q_proj', 'v_proj']); // PEFT's llama defaults
    expect(Object.keys(adapter).sort()).toEqual(
      ['0', '1'].flatMap((l) =>
        ['q_proj', 'v_proj'].flatMap((p) =>
          ['lora_A', 'lora_B'].map((f) => `base_model.model.model.layers.${l}.self_attn.${p}.${f}.weight`),
        ),
      ),
    );
    for (const name of Object.keys(SHAPES)) {
      const targeted = /\.(q_proj|v_proj)\.weight$/.test(name);
      if (!targeted) {
        expect(Array.from(after[name]?.dataSync() as Float32Array), name).toEqual(
          Array.from(before[name]?.dataSync() as Float32Array),
        );
        continue;
      }
      const ref = await loftqInit(before[name] as tf.Tensor2D, { numBits: 4, reducedRank: 4, numIter: 2 });
      const path = name.slice(0, -'.weight'.length);
      expect(Array.from(after[name]?.dataSync() as Float32Array)).toEqual(Array.from(ref.dequantized.dataSync()));
      expect(Array.from(adapter[`base_model.model.${path}.lora_A.weight`]?.dataSync() as Float32Array)).toEqual(
        Array.from(ref.loraA.dataSync()),
      );
      expect(Array.from(adapter[`base_model.model.${path}.lora_B.weight`]?.dataSync() as Float32Array)).toEqual(
        Array.from(ref.loraB.dataSync()),
      );
      tf.dispose([ref.dequantized, ref.loraA, ref.loraB]);
    }
    expect(readFileSync(join(out, 'tokenizer.json'), 'utf8')).toBe('{"model": {}}');
    tf.dispose([...Object.values(before), ...Object.values(after), ...Object.values(adapter)]);
  });

  it('the adapter loads onto the LoftQ base with @lora/core: Q + B·A is closer to W than Q', async () => {
    const base = await checkpoint();
    const out = join(mkdtempSync(join(tmpdir(), 'lora-loftq-out-')), 'm');
    const r = await run('loftq', '--base', base, '--out', out, '--rank', '8', '--target', 'up_proj', '--iter', '3');
    expect(r.code, r.err).toBe(0);
    class Mlp extends Module {
      up_proj = this.registerModule(
        'up_proj',
        withoutInit(() => new Linear(32, 64, { bias: false })),
      );
      forward(x: tf.Tensor) {
        return this.up_proj.call(x);
      }
    }
    class Layer extends Module {
      mlp = this.registerModule('mlp', new Mlp());
      forward(x: tf.Tensor) {
        return this.mlp.call(x);
      }
    }
    class Inner extends Module {
      layers = this.registerModule('layers', new ModuleList([new Layer(), new Layer()]));
      forward(x: tf.Tensor) {
        return x;
      }
    }
    class Model extends Module {
      model = this.registerModule('model', new Inner());
      forward(x: tf.Tensor) {
        return x;
      }
    }
    const m = new Model();
    const q = read(join(out, 'model.safetensors'));
    const w = read(join(base, 'model.safetensors'));
    m.loadStateDict(
      { 'model.layers.0.mlp.up_proj.weight': q['model.layers.0.mlp.up_proj.weight'] as tf.Tensor },
      { strict: false },
    );
    const { model: peft } = await loadAdapter(m, join(out, 'loftq_init'));
    const layer = peft.loraLayers().next().value?.[1];
    const delta = layer?.getDeltaWeight('default') as tf.Tensor;
    const key = 'model.layers.0.mlp.up_proj.weight';
    const err = (t: tf.Tensor) => tf.tidy(() => tf.norm(tf.sub(w[key] as tf.Tensor, t)).dataSync()[0] as number);
    const withLora = tf.add(q[key] as tf.Tensor, delta);
    expect(err(withLora)).toBeLessThan(err(q[key] as tf.Tensor) * 0.97);
    tf.dispose([delta, withLora, ...Object.values(q), ...Object.values(w)]);
    peft.dispose();
  });

  it('bf16 and sharded checkpoints: Q is written back in bf16, shard by shard, the index copied', async () => {
    const base = await checkpoint('BF16', true);
    const out = join(mkdtempSync(join(tmpdir(), 'lora-loftq-out-')), 'm');
    const r = await run(
      'loftq',
      '--base',
      base,
      '--out',
      out,
      '--rank',
      '2',
      '--bits',
      '2',
      '--target',
      'all-linear',
      '--block-size',
      '32',
    );
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/LoftQ on 12 weights/); // every projection; not the embedding, the norm or lm_head
    expect(readdirSync(out).sort()).toEqual([
      'config.json',
      'loftq_init',
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
      'model.safetensors.index.json',
      'tokenizer.json',
    ]);
    const header = readSafetensorsHeader(new Uint8Array(readFileSync(join(out, 'model-00001-of-00002.safetensors'))));
    expect(new Set(header.entries.map((e) => e.dtype))).toEqual(new Set(['BF16']));
    // Q in bf16 is what loftqInit gives for the bf16 weight, rounded to bf16
    const q = read(join(out, 'model-00002-of-00002.safetensors'));
    const w = read(join(base, 'model-00002-of-00002.safetensors'));
    const name = Object.keys(q).find((n) => n.endsWith('up_proj.weight')) as string;
    const ref = await loftqInit(w[name] as tf.Tensor2D, { numBits: 2, reducedRank: 2, blockSize: 32 });
    expect(Array.from(float32ToBf16(q[name]?.dataSync() as Float32Array))).toEqual(
      Array.from(float32ToBf16(ref.dequantized.dataSync() as Float32Array)),
    );
    tf.dispose([ref.dequantized, ref.loraA, ref.loraB, ...Object.values(q), ...Object.values(w)]);
  });

  it('bad input fails before anything is written: bits, rank, block size, targets, --out', async () => {
    const base = await checkpoint();
    const parent = mkdtempSync(join(tmpdir(), 'lora-loftq-out-'));
    const out = join(parent, 'm');
    const cases: [string[], RegExp][] = [
      [['--bits', '5'], /--bits "5" is not one of 2, 3, 4, 8/],
      [
        ['--rank', '32'],
        /--rank 32 is not below min\(out, in\) = 32 of model\.layers\.0\.self_attn\.q_proj\.weight \[32, 32\]/,
      ],
      [['--rank', '0'], /--rank "0" is not a positive integer/],
      [
        ['--bits', '2', '--block-size', '48'],
        /--block-size 48 does not divide the 1024 values of model\.layers\.0\.self_attn\.q_proj\.weight/,
      ],
      [['--target', 'q_prj'], /Target modules \["q_prj"\] not found in the base model/],
      [['--iter', '0'], /--iter "0" is not a positive integer/],
      [['--svd', 'exact'], /--svd "exact" is not one of auto, full, randomized/],
    ];
    for (const [extra, message] of cases) {
      const r = await run('loftq', '--base', base, '--out', out, ...extra);
      expect(r.code, extra.join(' ')).toBe(2);
      expect(r.err).toMatch(message);
      expect(existsSync(out)).toBe(false);
      expect(readdirSync(parent)).toEqual([]);
    }
    const inside = await run('loftq', '--base', base, '--out', join(base, 'loftq'));
    expect(inside.code).toBe(2);
    expect(inside.err).toMatch(/is inside --base/);
    mkdirSync(out);
    writeFileSync(join(out, 'keep.txt'), 'mine');
    const exists = await run('loftq', '--base', base, '--out', out);
    expect(exists.code).toBe(2);
    expect(exists.err).toMatch(/exists; choose a new path or pass --force/);
    // the shared output writer: --force replaces only what lora loftq could have written
    const foreign = await run('loftq', '--base', base, '--out', out, '--force');
    expect(foreign.code).toBe(2);
    expect(foreign.err).toMatch(/keep\.txt, which is not part of a model directory/);
    expect(readdirSync(out)).toEqual(['keep.txt']);
    expect(readFileSync(join(out, 'keep.txt'), 'utf8')).toBe('mine');
    expect(readdirSync(parent).sort()).toEqual(['m']);
    const noBase = await run('loftq', '--base', join(parent, 'nothing'), '--out', join(parent, 'x'));
    expect(noBase.err).toMatch(/is not a checkpoint directory/);
  });
});
