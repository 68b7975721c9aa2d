import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, parseSafetensors, readSafetensorsHeader, serializeSafetensors } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { combineAdapters, loraConfigFromJson, loraConfigToJson } from '@lora/core';
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

  it("names each module's layer kind: embedding, conv1d, conv2d (DoRA adapters too)", async () => {
    const r = await run('inspect', join(FIX, 'convdora-dora'));
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/dora true/);
    expect(r.out).toMatch(/^ {2}embed {2}embedding\+dora {2}r \d+/m);
    expect(r.out).toMatch(/^ {2}conv {2}conv2d\+dora {2}r \d+/m);
    expect(r.out).toMatch(/^ {2}conv1d {2}conv1d\+dora {2}r \d+/m);
  });
});

describe('lora merge', () => {
  it("merges into a single file as PEFT's merge_and_unload (DoRA adapter)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-cli-'));
    const out = join(dir, 'merged.safetensors');
    const r = await run(
      'merge',
      '--base',
      join(FIX, 'base.safetensors'),
      '--adapter',
      join(FIX, 'peft-dora'),
      '--out',
      out,
    );
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/wrote .*merged\.safetensors \(5 modules merged\)/);
    const merged = read(out);
    const want = read(join(FIX, 'expected.safetensors'));
    for (const k of ['layers.1.mlp.weight', 'layers.0.q_proj.weight'])
      expect(maxRelativeError(await merged[k]!.data(), await want[`peft-dora.merged.${k}`]!.data()), k).toBeLessThan(
        1e-5,
      );
    tf.dispose([...Object.values(merged), ...Object.values(want)]);
  });

  it("writes modules_to_save copies and trained biases in place of the base's, as PEFT's merge_and_unload", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-cli-'));
    const want = read(join(FIX, 'merge-replaced-expected.safetensors'));
    for (const [name, report] of [
      ['mts', /\(2 modules merged, 2 weights replaced by the adapter's/],
      ['bias-all', /\(4 modules merged, 9 weights replaced by the adapter's/],
      ['bias-lora-only', /\(4 modules merged, 4 weights replaced by the adapter's/],
    ] as const) {
      const out = join(dir, `${name}.safetensors`);
      const r = await run(
        'merge',
        '--base',
        join(FIX, 'base.safetensors'),
        '--adapter',
        join(FIX, `merge-replaced-${name}`),
        '--out',
        out,
      );
      expect(r.code, r.err).toBe(0);
      expect(r.err).toMatch(report);
      const merged = read(out);
      const keys = Object.keys(want).filter((k) => k.startsWith(`${name}.`));
      expect(Object.keys(merged).sort()).toEqual(keys.map((k) => k.slice(name.length + 1)).sort());
      for (const k of keys)
        expect(maxRelativeError(await merged[k.slice(name.length + 1)]!.data(), await want[k]!.data()), k).toBeLessThan(
          1e-5,
        );
      tf.dispose(Object.values(merged));
    }
    tf.dispose(Object.values(want));
    rmSync(dir, { recursive: true, force: true });
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
    const changed = header.entries
      .filter((e) => Buffer.compare(after.subarray(e.begin, e.end), before.subarray(e.begin, e.end)) !== 0)
      .map((e) => e.name);
    // regex target layers.0.*proj: q_proj and v_proj, each weight and bias (lora_bias)
    expect(changed.sort()).toEqual([
      'layers.0.q_proj.bias',
      'layers.0.q_proj.weight',
      'layers.0.v_proj.bias',
      'layers.0.v_proj.weight',
    ]);
    const merged = read(out);
    const want = read(join(FIX, 'expected.safetensors'));
    for (const k of ['layers.0.q_proj.weight', 'layers.0.q_proj.bias']) {
      // PEFT merged the float32 base; this base was rounded to bf16 first, and so is the result
      expect(
        maxRelativeError(await merged[k]!.data(), await want[`peft-regex-bias.merged.${k}`]!.data()),
        k,
      ).toBeLessThan(1e-2);
    }
    tf.dispose([...Object.values(base), ...Object.values(merged), ...Object.values(want)]);
  });

  it("merges trainable-token rows as PEFT's merge_and_unload, and refuses to write over the base", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-cli-tokens-'));
    const out = join(dir, 'merged.safetensors');
    const r = await run(
      'merge',
      '--base',
      join(FIX, 'tokens-base.safetensors'),
      '--adapter',
      join(FIX, 'peft-tokens-dict'),
      '--out',
      out,
    );
    expect(r.code, r.err).toBe(0);
    const merged = read(out);
    const want = read(join(FIX, 'tokens-expected.safetensors'));
    for (const k of ['embed_tokens.weight', 'lm_head.weight'])
      expect(maxRelativeError(await merged[k]!.data(), await want[`tokens-dict.merged.${k}`]!.data()), k).toBeLessThan(
        1e-6,
      );
    tf.dispose([...Object.values(merged), ...Object.values(want)]);

    const base = join(dir, 'base.safetensors');
    writeFileSync(base, readFileSync(join(FIX, 'tokens-base.safetensors')));
    const same = await run('merge', '--base', base, '--adapter', join(FIX, 'peft-tokens-dict'), '--out', base);
    expect([same.code, same.err]).toEqual([
      2,
      `lora merge: --out ${base} is --base ${base}: write the output somewhere else (the input is read while the output is written)`,
    ]);
    expect(Buffer.compare(readFileSync(base), readFileSync(join(FIX, 'tokens-base.safetensors')))).toBe(0);
    // an adapter for another model: refused from the headers, before anything is written
    const wrong = await run(
      'merge',
      '--base',
      base,
      '--adapter',
      join(FIX, 'peft-qv'),
      '--out',
      join(dir, 'wrong.safetensors'),
    );
    // as PEFT refuses to load it: its target_modules select nothing in this base
    expect(wrong.code).toBe(1);
    expect(wrong.err).toMatch(/^lora merge: Target modules \["q_proj","v_proj"\] not found in the base model/);
    expect(readdirSync(dir).sort()).toEqual(['base.safetensors', 'merged.safetensors']);
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
      writeFileSync(
        join(src, file),
        await serializeSafetensors(Object.fromEntries(keys.map((k) => [k, base[k]!])), { metadata: { format: 'pt' } }),
      );
      for (const k of keys) weightMap[k] = file;
    }
    writeFileSync(join(src, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    writeFileSync(join(src, 'config.json'), '{"model_type": "net"}');
    const out = join(mkdtempSync(join(tmpdir(), 'lora-cli-out-')), 'merged');
    const r = await run('merge', '--base', src, '--adapter', join(FIX, 'peft-patterns'), '--out', out);
    expect(r.code, r.err).toBe(0);
    expect(readdirSync(out).sort()).toEqual([
      'config.json',
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
      'model.safetensors.index.json',
    ]);
    const want = read(join(FIX, 'expected.safetensors'));
    const merged = {
      ...read(join(out, 'model-00001-of-00002.safetensors')),
      ...read(join(out, 'model-00002-of-00002.safetensors')),
    };
    expect(
      maxRelativeError(
        await merged['layers.1.mlp.weight']!.data(),
        await want['peft-patterns.merged.layers.1.mlp.weight']!.data(),
      ),
    ).toBeLessThan(1e-5);
    // an adapter for another model: a one-line error, exit 1 or 2, and no output directory
    const bad = join(mkdtempSync(join(tmpdir(), 'lora-cli-bad-')), 'merged');
    const r2 = await run('merge', '--base', src, '--adapter', join(FIX, 'peft-embedding'), '--out', bad);
    expect(r2.code).not.toBe(0);
    expect(r2.err.split('\n').at(-1)).toMatch(
      /^lora merge: Target modules \["embed","lin"\] not found in the base model/,
    );
    expect(existsSync(bad)).toBe(false);
    expect(readdirSync(join(bad, '..'))).toEqual([]);
    tf.dispose([...Object.values(base), ...Object.values(want), ...Object.values(merged)]);
  });

  it('refuses a merge that comes out NaN or infinite, naming the module; --no-safe-merge writes it with a warning', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-cli-nan-'));
    const broken = join(dir, 'broken');
    mkdirSync(broken);
    writeFileSync(join(broken, 'adapter_config.json'), readFileSync(join(FIX, 'peft-qv', 'adapter_config.json')));
    const tensors = read(join(FIX, 'peft-qv', 'adapter_model.safetensors'));
    const key = 'base_model.model.layers.1.q_proj.lora_B.weight';
    const values = (await tensors[key]!.data()) as Float32Array;
    values[3] = Number.POSITIVE_INFINITY;
    const raw = Object.fromEntries(
      await Promise.all(
        Object.entries(tensors).map(async ([k, t]) => [
          k,
          {
            dtype: 'float32' as const,
            shape: t.shape,
            values: k === key ? values : ((await t.data()) as Float32Array),
          },
        ]),
      ),
    );
    writeFileSync(join(broken, 'adapter_model.safetensors'), await serializeSafetensors(raw));
    tf.dispose(Object.values(tensors));
    const out = join(dir, 'merged.safetensors');
    const args = ['merge', '--base', join(FIX, 'base.safetensors'), '--adapter', broken, '--out', out];
    const refused = await run(...args);
    expect(refused.code).toBe(1);
    expect(refused.err.split('\n').at(-1)).toMatch(
      /^lora merge: \d+ of the \d+ values of layers\.1\.q_proj\.weight came out NaN or infinite after merging: the adapter seems to be broken; nothing was written \(--no-safe-merge writes it anyway\)$/,
    );
    expect(readdirSync(dir)).toEqual(['broken']);
    const written = await run(...args, '--no-safe-merge');
    expect(written.code, written.err).toBe(0);
    expect(written.err).toMatch(
      /^warning: \d+ of the \d+ values of layers\.1\.q_proj\.weight came out NaN or infinite/m,
    );
    const merged = read(out);
    expect(Array.from(await merged['layers.1.q_proj.weight']!.data()).some((v) => !Number.isFinite(v))).toBe(true);
    tf.dispose(Object.values(merged));
  });

  it('explains missing arguments and unknown commands in one line, with --help on each command', async () => {
    const r = await run('merge', '--base', 'x');
    expect([r.code, r.err]).toEqual([2, 'lora merge: merge needs --adapter; see lora merge --help']);
    expect((await run('frobnicate')).err).toBe(
      "lora frobnicate: unknown command 'frobnicate'; commands are inspect, merge, combine (lora --help)",
    );
    expect((await run('merge', '--help')).out).toMatch(/^lora merge --base/);
    expect((await run('inspect', '--help')).out).toMatch(/^lora inspect/);
    expect((await run('--help')).code).toBe(0);
  });
});

describe('lora combine', () => {
  const adapterFiles = (name: string) => ({
    config: loraConfigFromJson(JSON.parse(readFileSync(join(FIX, name, 'adapter_config.json'), 'utf8'))),
    tensors: read(join(FIX, name, 'adapter_model.safetensors')),
  });

  it("writes what combineAdapters gives, in PEFT's layout, with progress on stderr", async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'lora-cli-combine-')), 'mix');
    const r = await run(
      'combine',
      '--adapter',
      join(FIX, 'combine-a'),
      '--adapter',
      join(FIX, 'combine-b'),
      '--weights',
      '0.7,-0.4',
      '--type',
      'ties_svd',
      '--density',
      '0.5',
      '--svd-rank',
      '3',
      '--out',
      out,
    );
    expect(r.code, r.err).toBe(0);
    expect(readdirSync(out).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    expect(r.err).toMatch(/read .*combine-a \(1\/2\)/);
    expect(r.err).toMatch(/combined module 5\/5 /);
    expect(r.err.split('\n').at(-1)).toMatch(/^wrote .*mix \(ties_svd, r 3, 5 modules\)$/);
    const sources = [adapterFiles('combine-a'), adapterFiles('combine-b')];
    const want = await combineAdapters(sources, [0.7, -0.4], { combinationType: 'ties_svd', density: 0.5, svdRank: 3 });
    expect(readFileSync(join(out, 'adapter_config.json'), 'utf8')).toBe(loraConfigToJson(want.config));
    const got = read(join(out, 'adapter_model.safetensors'));
    expect(Object.keys(got).sort()).toEqual(Object.keys(want.tensors).sort());
    for (const [k, t] of Object.entries(want.tensors))
      expect(maxRelativeError(await got[k]!.data(), await t.data()), k).toBe(0);
    // one adapter: PEFT's linear rescale; rsLoRA and rank patterns come from the adapter's config
    const solo = join(mkdtempSync(join(tmpdir(), 'lora-cli-combine-')), 'solo');
    const r2 = await run('combine', '--adapter', join(FIX, 'combine-a'), '--weights', '1.5', '--out', solo);
    expect(r2.code, r2.err).toBe(0);
    const peft = read(join(FIX, 'combine-solo', 'adapter_model.safetensors'));
    const ours = read(join(solo, 'adapter_model.safetensors'));
    const k = 'base_model.model.conv.lora_A.weight';
    expect(maxRelativeError(await ours[k]!.data(), await peft[k]!.data())).toBeLessThan(1e-5);
    tf.dispose([
      ...Object.values(got),
      ...Object.values(want.tensors),
      ...Object.values(peft),
      ...Object.values(ours),
      ...sources.flatMap((s) => Object.values(s.tensors)),
    ]);
  });

  it('fails with one line and a non-zero exit on every bad input, leaving no output or temporary directory', async () => {
    const a = join(FIX, 'combine-a');
    const b = join(FIX, 'combine-b');
    const c = join(FIX, 'combine-c');
    const parent = mkdtempSync(join(tmpdir(), 'lora-cli-combine-bad-'));
    const out = join(parent, 'mix');
    const cases: [string[], RegExp][] = [
      [
        ['--adapter', a, '--adapter', b, '--weights', '0.7', '--out', out],
        /^lora combine: --weights has 1 value\(s\) for 2 adapter\(s\); give one weight per --adapter$/,
      ],
      [
        ['--adapter', a, '--adapter', b, '--weights', '0.7,x', '--out', out],
        /^lora combine: --weights value "x" is not a number$/,
      ],
      [
        ['--adapter', a, '--adapter', b, '--weights', '1,1', '--type', 'average', '--out', out],
        /^lora combine: unknown --type 'average'; types are svd, linear, cat, /,
      ],
      [
        ['--adapter', a, '--adapter', c, '--weights', '1,1', '--type', 'linear', '--out', out],
        /^lora combine: All adapters must have the same r value when using combination_type linear/,
      ],
      [
        ['--adapter', a, '--adapter', join(parent, 'nope'), '--weights', '1,1', '--out', out],
        /^lora combine: .*nope: no adapter_config\.json/,
      ],
      [
        ['--adapter', a, '--adapter', b, '--weights', '1,1', '--type', 'ties', '--out', out],
        /^lora combine: combination_type 'ties' prunes and needs a density in \[0, 1\]/,
      ],
      [
        ['--adapter', a, '--adapter', b, '--weights', '1,1', '--type', 'ties', '--density', '1.5', '--out', out],
        /^lora combine: --density "1\.5" is not a fraction in \[0, 1\]$/,
      ],
      [
        ['--adapter', a, '--adapter', b, '--weights', '1,1', '--svd-rank', '0', '--out', out],
        /^lora combine: --svd-rank "0" is not a positive integer$/,
      ],
      [
        [
          '--adapter',
          a,
          '--adapter',
          b,
          '--weights',
          '1,1',
          '--type',
          'ties',
          '--density',
          '0.5',
          '--majority-sign',
          'mean',
          '--out',
          out,
        ],
        /^lora combine: --majority-sign 'mean' is not total or frequency$/,
      ],
      [
        ['--adapter', a, '--adapter', b, '--weights', '1,1'],
        /^lora combine: combine needs --out; see lora combine --help$/,
      ],
      [['--weights', '1', '--out', out], /^lora combine: combine needs --adapter/],
      [
        ['--adapter', a, '--adapter', b, '--weights', '1,1', '--out', a],
        /^lora combine: --out .* is --adapter .*: write the output somewhere else/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = await run('combine', ...args);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.err.split('\n').at(-1), args.join(' ')).toMatch(message);
      expect(
        r.err.split('\n').filter((l) => l.startsWith('lora combine:')),
        args.join(' '),
      ).toHaveLength(1);
      expect(readdirSync(parent), args.join(' ')).toEqual([]);
    }
    // an existing --out is kept unless --force, and --force never removes files lora did not write
    mkdirSync(out);
    writeFileSync(join(out, 'keep.txt'), 'x');
    const r = await run('combine', '--adapter', a, '--adapter', b, '--weights', '1,1', '--out', out);
    expect([r.code, r.err]).toEqual([
      2,
      `lora combine: --out ${out} exists; choose a new path or pass --force to replace it`,
    ]);
    const foreign = await run('combine', '--adapter', a, '--adapter', b, '--weights', '1,1', '--out', out, '--force');
    expect([foreign.code, foreign.err]).toEqual([
      2,
      `lora combine: --out ${out} holds keep.txt, which is not part of a PEFT adapter directory: lora replaces only a PEFT adapter directory it could have written, even when forced; move those files away or choose another path`,
    ]);
    expect(readdirSync(out)).toEqual(['keep.txt']);
    rmSync(join(out, 'keep.txt'));
    expect((await run('combine', '--adapter', a, '--weights', '1', '--out', out)).code).toBe(0);
    const forced = await run('combine', '--adapter', a, '--adapter', b, '--weights', '1,1', '--out', out, '--force');
    expect(forced.code, forced.err).toBe(0);
    expect(forced.err).toMatch(/wrote .* \(svd, r \d+, 5 modules\)$/);
    expect(readdirSync(out).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    expect(readdirSync(parent)).toEqual(['mix']);
    expect((await run('combine', '--help')).out).toMatch(/^lora combine --adapter <dir>/);
    expect((await run('--help')).out).toMatch(/lora combine --adapter <dir> --adapter <dir> \.\.\. --weights/);
  });
});
