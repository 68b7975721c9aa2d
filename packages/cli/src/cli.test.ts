import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, parseSafetensors, readSafetensorsHeader, serializeSafetensors } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { runCli } from '@lora/cli';

// The PEFT fixtures of @lora/core: a base checkpoint, PEFT-saved adapters, and PEFT's merged weights.
const FIX = join(import.meta.dirname, '..', '..', 'core', '__fixtures__');
const read = (p: string) => parseSafetensors(new Uint8Array(readFileSync(p))).tensors;

async function run(...argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCli(argv, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

beforeAll(async () => {
  await initBackend('cpu');
});

describe('lora inspect', () => {
  it('lists modules with their ranks, alphas and scalings from the patterns', async () => {
    const r = await run('inspect', join(FIX, 'peft-patterns'));
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/r 4, lora_alpha 8, rslora true/);
    expect(r.out).toMatch(/layers\.1\.mlp {2}linear {2}r 2 {2}alpha 8 {2}scaling 5\.657/);
    expect(r.out).toMatch(/layers\.1\.out {2}linear {2}r 4 {2}alpha 3 {2}scaling 1\.500/);
    expect(r.out).toMatch(/3 modules, \d+ parameters in 6 tensors/);
  });
});

describe('lora merge', () => {
  it("merges into a single file as PEFT's merge_and_unload (DoRA adapter)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-cli-'));
    const out = join(dir, 'merged.safetensors');
    const r = await run('merge', '--base', join(FIX, 'base.safetensors'), '--adapter', join(FIX, 'peft-dora'), '--out', out);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/wrote .*merged\.safetensors \(5 modules merged\)/);
    const merged = read(out);
    const want = read(join(FIX, 'expected.safetensors'));
    for (const k of ['layers.1.mlp.weight', 'layers.0.q_proj.weight']) expect(maxRelativeError(await merged[k]!.data(), await want[`peft-dora.merged.${k}`]!.data()), k).toBeLessThan(1e-5);
    tf.dispose([...Object.values(merged), ...Object.values(want)]);
  });

  it('streams a bf16 checkpoint: stays bf16, untouched tensors keep their bytes, lora_bias merges weight and bias', async () => {
    const base = read(join(FIX, 'base.safetensors'));
    const dir = mkdtempSync(join(tmpdir(), 'lora-cli-bf16-'));
    const src = join(dir, 'model.safetensors');
    writeFileSync(src, await serializeSafetensors(base, { metadata: { format: 'pt' }, dtype: 'BF16' }));
    const out = join(dir, 'merged.safetensors');
    const r = await run('merge', '--base', src, '--adapter', join(FIX, 'peft-regex-bias'), '--out', out);
    expect(r.code, r.err).toBe(0);
    const before = new Uint8Array(readFileSync(src));
    const after = new Uint8Array(readFileSync(out));
    const header = readSafetensorsHeader(before);
    expect(after.length).toBe(before.length);
    expect(Buffer.compare(after.subarray(0, header.dataStart), before.subarray(0, header.dataStart))).toBe(0);
    const changed = header.entries.filter((e) => Buffer.compare(after.subarray(e.begin, e.end), before.subarray(e.begin, e.end)) !== 0).map((e) => e.name);
    // regex target layers.0.*proj: q_proj and v_proj, each weight and bias (lora_bias)
    expect(changed.sort()).toEqual(['layers.0.q_proj.bias', 'layers.0.q_proj.weight', 'layers.0.v_proj.bias', 'layers.0.v_proj.weight']);
    const merged = read(out);
    const want = read(join(FIX, 'expected.safetensors'));
    for (const k of ['layers.0.q_proj.weight', 'layers.0.q_proj.bias']) {
      // PEFT merged the float32 base; this base was rounded to bf16 first, and so is the result
      expect(maxRelativeError(await merged[k]!.data(), await want[`peft-regex-bias.merged.${k}`]!.data()), k).toBeLessThan(1e-2);
    }
    tf.dispose([...Object.values(base), ...Object.values(merged), ...Object.values(want)]);
  });

  it('merges a sharded directory shard by shard, copying the other files, and leaves nothing on failure', async () => {
    const base = read(join(FIX, 'base.safetensors'));
    const names = Object.keys(base).sort();
    const src = mkdtempSync(join(tmpdir(), 'lora-cli-sharded-'));
    const half = Math.ceil(names.length / 2);
    const shards = [names.slice(0, half), names.slice(half)];
    const weightMap: Record<string, string> = {};
    for (const [i, keys] of shards.entries()) {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      writeFileSync(join(src, file), await serializeSafetensors(Object.fromEntries(keys.map((k) => [k, base[k]!])), { metadata: { format: 'pt' } }));
      for (const k of keys) weightMap[k] = file;
    }
    writeFileSync(join(src, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    writeFileSync(join(src, 'config.json'), '{"model_type": "net"}');
    const out = join(mkdtempSync(join(tmpdir(), 'lora-cli-out-')), 'merged');
    const r = await run('merge', '--base', src, '--adapter', join(FIX, 'peft-patterns'), '--out', out);
    expect(r.code, r.err).toBe(0);
    expect(readdirSync(out).sort()).toEqual(['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
    const want = read(join(FIX, 'expected.safetensors'));
    const merged = { ...read(join(out, 'model-00001-of-00002.safetensors')), ...read(join(out, 'model-00002-of-00002.safetensors')) };
    expect(maxRelativeError(await merged['layers.1.mlp.weight']!.data(), await want['peft-patterns.merged.layers.1.mlp.weight']!.data())).toBeLessThan(1e-5);
    // an adapter for another model: a one-line error, exit 1 or 2, and no output directory
    const bad = join(mkdtempSync(join(tmpdir(), 'lora-cli-bad-')), 'merged');
    const r2 = await run('merge', '--base', src, '--adapter', join(FIX, 'peft-embedding'), '--out', bad);
    expect(r2.code).not.toBe(0);
    expect(r2.err.split('\n').at(-1)).toMatch(/^lora merge: the base has no embed\.weight/);
    expect(existsSync(bad)).toBe(false);
    expect(readdirSync(join(bad, '..'))).toEqual([]);
    tf.dispose([...Object.values(base), ...Object.values(want), ...Object.values(merged)]);
  });

  it('explains missing arguments and unknown commands in one line, with --help on each command', async () => {
    const r = await run('merge', '--base', 'x');
    expect([r.code, r.err]).toEqual([2, 'lora merge: merge needs --adapter; see lora merge --help']);
    expect((await run('frobnicate')).err).toBe("lora frobnicate: unknown command 'frobnicate'; commands are inspect and merge (lora --help)");
    expect((await run('merge', '--help')).out).toMatch(/^lora merge --base/);
    expect((await run('inspect', '--help')).out).toMatch(/^lora inspect/);
    expect((await run('--help')).code).toBe(0);
  });
});
