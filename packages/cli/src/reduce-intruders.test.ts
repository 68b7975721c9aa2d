import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, parseSafetensors, readSafetensorsHeader } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { runCli } from '@lora/cli';

// The PEFT fixtures of @lora/intruders: base weights, a PEFT-saved adapter, and PEFT's reduce_intruder_dimension.
const FIX = join(import.meta.dirname, '..', '..', 'intruders', '__fixtures__');
const read = (p: string) => parseSafetensors(new Uint8Array(readFileSync(p))).tensors;
interface SettingRecord {
  options: { top_k?: number; threshold_epsilon?: number; mitigation_lambda?: number };
  lines: string[];
  intruders: Record<string, number>;
  scaling: Record<string, number>;
}
const records = (net: string): Record<string, SettingRecord> =>
  JSON.parse(readFileSync(join(FIX, net, 'record.json'), 'utf8'));

async function run(...argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCli(argv, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out, err: err.join('\n') };
}

beforeAll(async () => {
  await initBackend('cpu');
});

describe('lora reduce-intruders', () => {
  for (const net of ['net', 'gpt']) {
    for (const [setting, record] of Object.entries(records(net))) {
      it(`${net}, ${setting}: PEFT's intruder counts and new ΔW, written in PEFT's layout`, async () => {
        const out = join(mkdtempSync(join(tmpdir(), 'lora-intruders-')), 'reduced');
        const flags = [
          ...(record.options.top_k !== undefined ? ['--top-k', String(record.options.top_k)] : []),
          ...(record.options.threshold_epsilon !== undefined
            ? ['--epsilon', String(record.options.threshold_epsilon)]
            : []),
          ...(record.options.mitigation_lambda !== undefined
            ? ['--lambda', String(record.options.mitigation_lambda)]
            : []),
        ];
        const adapter = join(FIX, net, 'adapter');
        const r = await run(
          'reduce-intruders',
          '--base',
          join(FIX, net, 'base.safetensors'),
          '--adapter',
          adapter,
          '--out',
          out,
          ...flags,
        );
        expect(r.code, r.err).toBe(0);
        expect([...r.out].sort()).toEqual(record.lines.slice(0, -1).sort());
        expect(r.err).toMatch(/wrote .*reduced \(\d of \d modules changed, \d+ intruder directions scaled\)/);
        expect(readdirSync(out).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
        // the config as it was; the weights file with the same names, dtypes and shapes
        expect(readFileSync(join(out, 'adapter_config.json'), 'utf8')).toBe(
          readFileSync(join(adapter, 'adapter_config.json'), 'utf8'),
        );
        const header = (p: string) =>
          readSafetensorsHeader(new Uint8Array(readFileSync(p))).entries.map((e) => [e.name, e.dtype, e.shape]);
        expect(header(join(out, 'adapter_model.safetensors'))).toEqual(
          header(join(adapter, 'adapter_model.safetensors')),
        );
        const got = read(join(out, 'adapter_model.safetensors'));
        const expected = read(join(FIX, net, `${setting}.safetensors`));
        for (const [path, s] of Object.entries(record.scaling)) {
          const embedding = path === 'embed';
          const a = got[`base_model.model.${path}.${embedding ? 'lora_embedding_A' : 'lora_A.weight'}`] as tf.Tensor2D;
          const b = got[`base_model.model.${path}.${embedding ? 'lora_embedding_B' : 'lora_B.weight'}`] as tf.Tensor2D;
          const delta = tf.tidy(() => {
            const ba = tf.mul(tf.matMul(b, a), s);
            return embedding || net === 'gpt' ? tf.transpose(ba) : ba; // the stored layout
          });
          const want = tf.tidy(() =>
            tf.mul(tf.matMul(expected[`${path}.B_new`] as tf.Tensor2D, expected[`${path}.A_new`] as tf.Tensor2D), s),
          );
          expect(maxRelativeError(await delta.data(), await want.data())).toBeLessThan(1e-4);
          tf.dispose([delta, want]);
        }
        tf.dispose([...Object.values(got), ...Object.values(expected)]);
      });
    }
  }

  it('refuses bad options and a base without the adapted weights, writing nothing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-intruders-'));
    const out = join(dir, 'reduced');
    const base = join(FIX, 'net', 'base.safetensors');
    const adapter = join(FIX, 'net', 'adapter');
    const cases: [string[], RegExp][] = [
      [['--base', base, '--adapter', adapter], /reduce-intruders needs --out/],
      [['--base', base, '--adapter', adapter, '--out', out, '--top-k', '0'], /--top-k "0" is not a positive integer/],
      [['--base', base, '--adapter', adapter, '--out', out, '--lambda', 'half'], /--lambda "half" is not a number/],
      [['--base', base, '--adapter', adapter, '--out', adapter], /--out .* is --adapter/],
      [['--base', base, '--adapter', adapter, '--out', join(adapter, 'reduced')], /--out .* is inside --adapter/],
      [
        ['--base', join(FIX, 'gpt', 'base.safetensors'), '--adapter', adapter, '--out', out],
        /the base has no (\w+\.weight, ){2}\w+\.weight: is this the adapter's base model/,
      ],
    ];
    for (const [argv, message] of cases) {
      const r = await run('reduce-intruders', ...argv);
      expect(r.code).not.toBe(0);
      expect(r.err).toMatch(message);
    }
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(dir)).toEqual([]);
    expect(existsSync(join(adapter, 'reduced'))).toBe(false);
  });

  it('replaces an existing --out only with --force, and never a directory holding other files', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-intruders-'));
    const out = join(dir, 'reduced');
    const argv = [
      '--base',
      join(FIX, 'net', 'base.safetensors'),
      '--adapter',
      join(FIX, 'net', 'adapter'),
      '--out',
      out,
    ];
    expect((await run('reduce-intruders', ...argv, '--lambda', '0')).code).toBe(0);
    const first = readFileSync(join(out, 'adapter_model.safetensors'));
    const again = await run('reduce-intruders', ...argv);
    expect(again.code).not.toBe(0);
    expect(again.err).toMatch(/exists; choose a new path or pass --force to replace it/);
    expect(readFileSync(join(out, 'adapter_model.safetensors'))).toEqual(first);
    const r = await run('reduce-intruders', ...argv, '--force');
    expect(r.code).toBe(0);
    expect(readFileSync(join(out, 'adapter_model.safetensors'))).not.toEqual(first);
    expect(readdirSync(dir)).toEqual(['reduced']);
    // a directory that is not an adapter is not replaced, even with --force
    const foreign = join(dir, 'notes');
    mkdirSync(foreign);
    writeFileSync(join(foreign, 'todo.txt'), 'keep me');
    const refused = await run('reduce-intruders', ...argv.slice(0, -1), foreign, '--force');
    expect(refused.code).not.toBe(0);
    expect(readdirSync(foreign)).toEqual(['todo.txt']);
  });

  it('is listed in lora --help', async () => {
    const r = await run('--help');
    expect(r.out.join('\n')).toMatch(/lora reduce-intruders --base <file\|dir> --adapter <dir> --out <dir>/);
  });
});
