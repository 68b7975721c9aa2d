/**
 * The CLI on careless input: what it must refuse or do right where it used to guess (merging modules the
 * adapter does not target, treating every *.safetensors as a shard, a folder named x.safetensors), and
 * raw errors that must name the file and the fix.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, parseSafetensors, serializeSafetensors } from '@lora/tensor';
import { runCli } from '@lora/cli';

const FIX = join(import.meta.dirname, '..', '..', 'core', '__fixtures__');
const read = (p: string) => parseSafetensors(new Uint8Array(readFileSync(p))).tensors;

async function run(...argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCli(argv, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

/** A copy of a fixture adapter, its config changed. */
function adapterWith(name: string, change: (json: Record<string, unknown>) => void): string {
  const dir = mkdtempSync(join(tmpdir(), 'lora-cli-adapter-'));
  cpSync(join(FIX, name), dir, { recursive: true });
  const json = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
  change(json);
  writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(json));
  return dir;
}

beforeAll(async () => {
  await initBackend('cpu');
});

describe('lora merge', () => {
  it("merges only the modules the adapter's target_modules select, as PEFT loads them", async () => {
    const adapter = adapterWith('peft-qv', (j) => {
      j.target_modules = ['q_proj'];
    });
    const out = join(mkdtempSync(join(tmpdir(), 'lora-cli-')), 'merged.safetensors');
    const r = await run('merge', '--base', join(FIX, 'base.safetensors'), '--adapter', adapter, '--out', out);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/warning: the adapter holds LoRA weights for 2 module\(s\) its target_modules do not select/);
    expect(r.err).toMatch(/\(2 modules merged\)/);
    const base = read(join(FIX, 'base.safetensors'));
    const merged = read(out);
    expect(Array.from(await merged['layers.0.v_proj.weight']!.data())).toEqual(
      Array.from(await base['layers.0.v_proj.weight']!.data()),
    );
    expect(Array.from(await merged['layers.0.q_proj.weight']!.data())).not.toEqual(
      Array.from(await base['layers.0.q_proj.weight']!.data()),
    );
    tf.dispose([...Object.values(base), ...Object.values(merged)]);
    // target_modules that select nothing in the base: PEFT's error, exit 1, nothing written (it exited 0)
    const none = adapterWith('peft-qv', (j) => {
      j.target_modules = ['k_proj'];
    });
    const out2 = join(mkdtempSync(join(tmpdir(), 'lora-cli-')), 'merged.safetensors');
    const r2 = await run('merge', '--base', join(FIX, 'base.safetensors'), '--adapter', none, '--out', out2);
    expect(r2.code).toBe(1);
    expect(r2.err).toMatch(/^lora merge: Target modules \["k_proj"\] not found in the base model/);
    expect(existsSync(out2)).toBe(false);
  });

  it('finds the weights of a folder by model.safetensors (or the index), not every *.safetensors in it', async () => {
    const src = mkdtempSync(join(tmpdir(), 'lora-cli-folder-'));
    cpSync(join(FIX, 'base.safetensors'), join(src, 'model.safetensors'));
    // a stray file that holds the same names: it used to be "merged" as if it were a shard
    cpSync(join(FIX, 'base.safetensors'), join(src, 'io.safetensors'));
    writeFileSync(join(src, 'config.json'), '{}');
    const out = join(mkdtempSync(join(tmpdir(), 'lora-cli-out-')), 'merged');
    const r = await run('merge', '--base', src, '--adapter', join(FIX, 'peft-qv'), '--out', out);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/merging model\.safetensors \(1\/1\)/);
    expect(readdirSync(out).sort()).toEqual(['config.json', 'io.safetensors', 'model.safetensors']);
    expect(Buffer.compare(readFileSync(join(out, 'io.safetensors')), readFileSync(join(src, 'io.safetensors')))).toBe(
      0,
    );
    expect(
      Buffer.compare(readFileSync(join(out, 'model.safetensors')), readFileSync(join(src, 'model.safetensors'))),
    ).not.toBe(0);
    // a folder with neither: named, with what to do
    const empty = mkdtempSync(join(tmpdir(), 'lora-cli-empty-'));
    cpSync(join(FIX, 'base.safetensors'), join(empty, 'weights.safetensors'));
    const r2 = await run('merge', '--base', empty, '--adapter', join(FIX, 'peft-qv'), '--out', join(empty, 'o'));
    expect(r2.err).toMatch(
      /no model\.safetensors or model\.safetensors\.index\.json \(found weights\.safetensors; pass the file itself as --base\)/,
    );
  });

  it('refuses a folder base with a .safetensors --out (it made a directory named x.safetensors)', async () => {
    const src = mkdtempSync(join(tmpdir(), 'lora-cli-folder-'));
    cpSync(join(FIX, 'base.safetensors'), join(src, 'model.safetensors'));
    const parent = mkdtempSync(join(tmpdir(), 'lora-cli-out-'));
    const r = await run(
      'merge',
      '--base',
      src,
      '--adapter',
      join(FIX, 'peft-qv'),
      '--out',
      join(parent, 'x.safetensors'),
    );
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/is a checkpoint directory, so --out must be a directory.*pass --base .*model\.safetensors/);
    expect(readdirSync(parent)).toEqual([]);
  });

  it('names the file and the tensors when lora_A and lora_B disagree (it reported a made-up shape)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-cli-bad-'));
    cpSync(join(FIX, 'peft-qv', 'adapter_config.json'), join(dir, 'adapter_config.json'));
    const t = read(join(FIX, 'peft-qv', 'adapter_model.safetensors'));
    t['base_model.model.layers.0.q_proj.lora_B.weight'] = tf.zeros([8, 2]);
    writeFileSync(join(dir, 'adapter_model.safetensors'), await serializeSafetensors(t));
    tf.dispose(Object.values(t));
    const r = await run(
      'merge',
      '--base',
      join(FIX, 'base.safetensors'),
      '--adapter',
      dir,
      '--out',
      // beside the adapter: an --out inside it is refused before the adapter is read
      join(mkdtempSync(join(tmpdir(), 'lora-cli-out-')), 'o.safetensors'),
    );
    expect(r.code).toBe(1);
    expect(r.err.split('\n').at(-1)).toBe(
      `lora merge: ${join(dir, 'adapter_model.safetensors')}: tensor 'base_model.model.layers.0.q_proj.lora_B.weight' shape: base_model.model.layers.0.q_proj.lora_B.weight [8, 2] has rank 2 but base_model.model.layers.0.q_proj.lora_A.weight [4, 8] has rank 4; the file is corrupt or mixes two adapters`,
    );
  });

  it('names a missing shard and an invalid config by file', async () => {
    const src = mkdtempSync(join(tmpdir(), 'lora-cli-sharded-'));
    cpSync(join(FIX, 'base.safetensors'), join(src, 'model-00001-of-00002.safetensors'));
    const names = Object.keys(read(join(FIX, 'base.safetensors')));
    writeFileSync(
      join(src, 'model.safetensors.index.json'),
      JSON.stringify({
        weight_map: Object.fromEntries(names.map((n, i) => [n, `model-0000${(i % 2) + 1}-of-00002.safetensors`])),
      }),
    );
    const r = await run('merge', '--base', src, '--adapter', join(FIX, 'peft-qv'), '--out', join(src, 'out'));
    expect(r.err).toBe(`lora merge: ${join(src, 'model-00002-of-00002.safetensors')}: file does not exist`);
    const bad = adapterWith('peft-qv', () => undefined);
    writeFileSync(join(bad, 'adapter_config.json'), '{"peft_type": "LORA", "r": }');
    const r2 = await run('inspect', bad);
    expect(r2.err).toMatch(new RegExp(`^lora inspect: ${join(bad, 'adapter_config.json')}: is not valid JSON`));
    const alpha = adapterWith('peft-qv', (j) => {
      j.lora_alpha = 'x';
    });
    const r3 = await run('inspect', alpha);
    expect(r3.err).toBe(
      `lora inspect: ${join(alpha, 'adapter_config.json')}: lora_alpha must be a finite number (float32 range); got "x". Set it to a number such as 16 (often 2·r)`,
    );
  });
});

describe('lora inspect', () => {
  it('counts base weights saved with the adapter apart from the LoRA parameters (35 328 against 2 560)', async () => {
    const r = await run('inspect', join(FIX, 'peft-embed-layers'));
    expect(r.code, r.err).toBe(0);
    // embed: A [2, 20] + B [8, 2] = 56; lin: A [2, 8] + B [8, 2] = 32
    expect(r.out).toMatch(/^ {2}embed_tokens {2}embedding {2}r 2 .* 56 params$/m);
    expect(r.out).toMatch(/^ {2}2 modules, 88 parameters in 4 tensors$/m);
    expect(r.out).toMatch(
      /also saved with the adapter .*: 1 tensors, 160 parameters: embed_tokens\.base_layer\.weight \[20, 8\]/,
    );
  });

  it('prints one JSON object with --json, and the version with --version', async () => {
    const r = await run('inspect', join(FIX, 'peft-embed-layers'), '--json');
    expect(r.code, r.err).toBe(0);
    const json = JSON.parse(r.out);
    expect(json.loraParameters).toBe(88);
    expect(json.otherParameters).toBe(160);
    expect(json.modules.map((m: { path: string; kind: string }) => `${m.path}:${m.kind}`)).toEqual([
      'embed_tokens:embedding',
      'lin:linear',
    ]);
    const version = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8')).version;
    expect(await run('--version')).toEqual({ code: 0, out: version, err: '' });
  });

  it('says which backend started with --verbose', async () => {
    const r = await run('inspect', join(FIX, 'peft-qv'), '--verbose');
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/^backend (tensorflow|wasm|cpu) \(/);
  });
});

describe('lora combine', () => {
  it('takes a negative first weight without an = (it said "argument is ambiguous")', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'lora-cli-neg-')), 'mix');
    const r = await run(
      'combine',
      '--adapter',
      join(FIX, 'combine-a'),
      '--adapter',
      join(FIX, 'combine-b'),
      '--weights',
      '-0.5,1',
      '--type',
      'cat',
      '--out',
      out,
    );
    expect(r.code, r.err).toBe(0);
    expect(readdirSync(out).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    const unknown = await run('combine', '--frob');
    expect([unknown.code, unknown.err]).toEqual([2, expect.stringMatching(/^lora combine: Unknown option '--frob'/)]);
  });
});
