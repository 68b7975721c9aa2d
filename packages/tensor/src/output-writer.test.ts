import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  realpathSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { serializeSafetensors } from '@lora/tensor';
import {
  OutputError,
  type OutputOptions,
  outputKinds,
  prepareOutput,
  removeStaleTemporaries,
  writeFileAtomic,
  writeOutput,
} from '@lora/tensor/node';

const fresh = () => realpathSync(mkdtempSync(join(tmpdir(), 'lora-out-')));
const adapter: OutputOptions = { kind: outputKinds.adapterDirectory, warn: () => undefined };

/** Writes a PEFT-like adapter directory with the given config text. */
function writeAdapterDir(dir: string, config: string, extra: Record<string, string> = {}): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'adapter_config.json'), config);
  writeFileSync(join(dir, 'adapter_model.safetensors'), `weights of ${config}`);
  for (const [name, text] of Object.entries(extra)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
}

/** Every file under `dir` with its text, by relative path. */
function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[relative(dir, p)] = readFileSync(p, 'utf8');
    }
  };
  walk(dir);
  return out;
}

const fillAdapter = (config: string) => async (dir: string) => {
  await writeFile(join(dir, 'adapter_config.json'), config);
  await writeFile(join(dir, 'adapter_model.safetensors'), `weights of ${config}`);
};

/** A PID that no process has: one that ran and exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
  return Number(r.stdout.trim());
}

async function rejection(p: Promise<unknown>): Promise<OutputError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(OutputError);
    return e as OutputError;
  }
  throw new Error('expected the write to be refused');
}

describe('writeOutput', () => {
  it('writes a new output through a temporary folder, creating missing parents, and leaves nothing else', async () => {
    const root = fresh();
    const out = join(root, 'a', 'b', 'mix');
    let seen = '';
    await writeOutput(out, adapter, async (dir, o) => {
      seen = dir;
      expect(o.replaces).toBe(false);
      expect(existsSync(out)).toBe(false);
      await fillAdapter('new')(dir);
    });
    expect(dirname(dirname(seen))).toBe(join(root, 'a', 'b'));
    expect(tree(out)).toEqual({ 'adapter_config.json': 'new', 'adapter_model.safetensors': 'weights of new' });
    expect(readdirSync(join(root, 'a', 'b'))).toEqual(['mix']);
  });

  it('refuses an existing output unless forced; an empty directory counts as absent', async () => {
    const root = fresh();
    const out = join(root, 'mix');
    writeAdapterDir(out, 'old');
    const e = await rejection(writeOutput(out, adapter, fillAdapter('new')));
    expect([e.code, e.message]).toEqual([
      'exists',
      `the output ${out} exists; choose a new path or pass { force: true } to replace it`,
    ]);
    expect(tree(out)).toEqual({ 'adapter_config.json': 'old', 'adapter_model.safetensors': 'weights of old' });
    const cli = await rejection(
      writeOutput(out, { ...adapter, label: '--out', forceHint: 'pass --force' }, fillAdapter('new')),
    );
    expect(cli.message).toBe(`--out ${out} exists; choose a new path or pass --force to replace it`);
    const empty = join(root, 'empty');
    mkdirSync(empty);
    await writeOutput(empty, adapter, fillAdapter('new'));
    expect(readdirSync(empty).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    expect(readdirSync(root).sort()).toEqual(['empty', 'mix']);
  });

  it('with force replaces an adapter directory as one unit (sub-adapters too), keeping its README.md', async () => {
    const root = fresh();
    const out = join(root, 'mix');
    writeAdapterDir(out, 'old', { 'README.md': 'my notes', 'other/adapter_config.json': 'old other' });
    await writeOutput(out, { ...adapter, force: true }, async (dir) => {
      await fillAdapter('new')(dir);
      mkdirSync(join(dir, 'second'));
      await fillAdapter('new second')(join(dir, 'second'));
    });
    expect(tree(out)).toEqual({
      'README.md': 'my notes',
      'adapter_config.json': 'new',
      'adapter_model.safetensors': 'weights of new',
      'second/adapter_config.json': 'new second',
      'second/adapter_model.safetensors': 'weights of new second',
    });
    expect(readdirSync(root)).toEqual(['mix']);
  });

  it('never removes what it did not write: foreign files are refused even with force, and named', async () => {
    const root = fresh();
    const out = join(root, 'mydir');
    writeAdapterDir(out, 'old', { 'notes.txt': 'mine', 'sub/data.csv': 'mine too' });
    const before = tree(out);
    const e = await rejection(writeOutput(out, { ...adapter, force: true }, fillAdapter('new')));
    expect(e.code).toBe('foreign');
    expect(e.message).toMatch(
      /^the output .*mydir holds notes\.txt, sub\/data\.csv, which are not part of a PEFT adapter directory: lora replaces only a PEFT adapter directory/,
    );
    expect(tree(out)).toEqual(before);
    expect(readdirSync(root)).toEqual(['mydir']);
    // a model directory owns its weights, index, config and tokenizer files, and what the caller names
    const model = join(root, 'model');
    mkdirSync(model);
    for (const f of ['model-00001-of-00002.safetensors', 'model.safetensors.index.json', 'config.json', 'extra.py'])
      writeFileSync(join(model, f), 'x');
    const kind = outputKinds.modelDirectory();
    expect(
      (await rejection(writeOutput(model, { kind, force: true, warn: () => undefined }, async () => {}))).message,
    ).toMatch(/holds extra\.py, which is not part of a model directory/);
    await writeOutput(model, { kind: outputKinds.modelDirectory({ alsoOwns: ['extra.py'] }), force: true }, async (d) =>
      writeFile(join(d, 'model.safetensors'), 'y'),
    );
    expect(readdirSync(model)).toEqual(['model.safetensors']);
  });

  it('replaces a file only with a file of its kind: a safetensors file, never a directory or a text file', async () => {
    const root = fresh();
    const out = join(root, 'merged.safetensors');
    const kind = { kind: outputKinds.safetensorsFile, force: true };
    writeFileSync(out, 'a shopping list');
    const e = await rejection(writeOutput(out, kind, async (f) => writeFile(f, 'new')));
    expect([e.code, e.message]).toEqual([
      'foreign',
      expect.stringMatching(/merged\.safetensors is not a safetensors file: lora replaces only a safetensors file/),
    ]);
    expect(readFileSync(out, 'utf8')).toBe('a shopping list');
    writeFileSync(out, await serializeSafetensors({}, { metadata: { format: 'pt' } }));
    await writeOutput(out, kind, async (f) => writeFile(f, 'new'));
    expect(readFileSync(out, 'utf8')).toBe('new');
    const dir = join(root, 'dir.safetensors');
    mkdirSync(dir);
    expect((await rejection(writeOutput(dir, kind, async (f) => writeFile(f, 'new')))).message).toMatch(
      /dir\.safetensors is not a file; the output is a safetensors file/,
    );
    const link = join(root, 'link');
    symlinkSync(join(root, 'dir.safetensors'), link);
    expect((await rejection(writeOutput(link, { ...adapter, force: true }, fillAdapter('x')))).message).toMatch(
      /link is a symbolic link/,
    );
    expect(readdirSync(root).sort()).toEqual(['dir.safetensors', 'link', 'merged.safetensors']);
  });

  it('refuses an output that is, contains or lies inside an input, the current or home directory, or the root', async () => {
    const root = fresh();
    const base = join(root, 'models', 'base');
    writeAdapterDir(base, 'base');
    const inputs = [{ path: base, label: '--base' }];
    const cases: [string, RegExp][] = [
      [base, /is --base .*: write the output somewhere else/],
      [join(root, 'models'), /contains --base .*: replacing it would remove the input/],
      [join(base, 'merged'), /is inside --base .*: write the output outside the input/],
      [process.cwd(), /is the current directory; write into a new sub-directory instead/],
      [dirname(process.cwd()), /contains the current directory/],
      [homedir(), /the home directory/],
      ['/', /is the root of the file system/],
    ];
    for (const [out, message] of cases) {
      const e = await rejection(writeOutput(out, { ...adapter, force: true, inputs }, fillAdapter('x')));
      expect(e.message, out).toMatch(message);
      expect(['overlap', 'unsafe-path']).toContain(e.code);
    }
    // the same through a symbolic link to the input's folder (the link's target is what would be replaced)
    symlinkSync(join(root, 'models'), join(root, 'alias'));
    expect(
      (await rejection(writeOutput(join(root, 'alias'), { ...adapter, force: true, inputs }, fillAdapter('x')))).code,
    ).toBe('overlap');
    expect(
      (await rejection(writeOutput(join(root, 'alias', 'base'), { ...adapter, force: true, inputs }, fillAdapter('x'))))
        .code,
    ).toBe('overlap');
    expect(tree(base)).toEqual({ 'adapter_config.json': 'base', 'adapter_model.safetensors': 'weights of base' });
    expect(readdirSync(join(root, 'models'))).toEqual(['base']);
  });

  it('on an error in the work removes everything it wrote (and the parents it made); the old output stays', async () => {
    const root = fresh();
    const out = join(root, 'mix');
    writeAdapterDir(out, 'old');
    await expect(
      writeOutput(out, { ...adapter, force: true }, async (dir) => {
        await fillAdapter('new')(dir);
        throw new Error('the combination failed');
      }),
    ).rejects.toThrow('the combination failed');
    expect(tree(out)).toEqual({ 'adapter_config.json': 'old', 'adapter_model.safetensors': 'weights of old' });
    expect(readdirSync(root)).toEqual(['mix']);
    await expect(
      writeOutput(join(root, 'x', 'y', 'z'), adapter, async () => Promise.reject(new Error('no'))),
    ).rejects.toThrow('no');
    expect(readdirSync(root)).toEqual(['mix']);
  });

  it('checks that the folder is writable and has room before the work starts, with a clear message', async () => {
    const root = fresh();
    writeFileSync(join(root, 'a-file'), 'x');
    let worked = false;
    const work = async () => {
      worked = true;
    };
    const under = await rejection(writeOutput(join(root, 'a-file', 'out'), adapter, work));
    expect([under.code, under.message]).toEqual([
      'not-writable',
      `the output ${join(root, 'a-file', 'out')}: ${join(root, 'a-file')} is a file, not a directory; choose another path`,
    ]);
    const space = await rejection(writeOutput(join(root, 'big'), { ...adapter, bytesNeeded: 2 ** 60 }, work));
    expect(space.code).toBe('no-space');
    expect(space.message).toMatch(
      /big needs about 1073741824\.00 GiB in .*, and only [\d.]+ [KMG]iB is free; free some space or choose another disk$/,
    );
    expect(worked).toBe(false);
    expect(readdirSync(root)).toEqual(['a-file']);
  });

  it('reports a disk that fills up during the work against the output, not the hidden temporary name', async () => {
    const root = fresh();
    const out = join(root, 'mix');
    const e = await rejection(
      writeOutput(out, adapter, async (dir) => {
        const file = join(dir, 'adapter_model.safetensors');
        throw Object.assign(new Error(`ENOSPC: no space left on device, write '${file}'`), {
          code: 'ENOSPC',
          path: file,
        });
      }),
    );
    expect([e.code, e.message]).toEqual([
      'no-space',
      `the output ${out}: the disk holding ${root} is full (ENOSPC); free some space or choose another disk`,
    ]);
    expect(readdirSync(root)).toEqual([]);
  });

  it('refuses a read-only folder before the work starts', async (ctx) => {
    // root writes through file permissions, so as root a folder the kernel refuses (sysfs) stands in
    let folder: string;
    if (process.getuid?.() !== 0) {
      folder = fresh();
      spawnSync('chmod', ['0555', folder]);
    } else {
      folder = '/sys';
      try {
        mkdirSync('/sys/lora-probe');
        ctx.skip('running as root, and no folder here refuses root (not even /sys): the permission case is not tested');
      } catch {
        // refused: a fine read-only folder
      }
    }
    let worked = false;
    const e = await rejection(
      writeOutput(join(folder, 'out'), adapter, async () => {
        worked = true;
      }),
    );
    expect(e.code).toBe('not-writable');
    expect(e.message).toMatch(
      /: cannot write in .* \(permission denied\); choose a folder you can write to$|read-only file system/,
    );
    expect(worked).toBe(false);
  });

  it('re-checks the old output at commit: a file added to it meanwhile keeps it, and the new output is dropped', async () => {
    const root = fresh();
    const out = join(root, 'mix');
    writeAdapterDir(out, 'old');
    const e = await rejection(
      writeOutput(out, { ...adapter, force: true }, async (dir) => {
        await fillAdapter('new')(dir);
        writeFileSync(join(out, 'added-meanwhile.txt'), 'mine');
      }),
    );
    expect(e.message).toMatch(
      /holds added-meanwhile\.txt, which is not part of a PEFT adapter directory; nothing was replaced/,
    );
    expect(Object.keys(tree(out)).sort()).toEqual([
      'adapter_config.json',
      'adapter_model.safetensors',
      'added-meanwhile.txt',
    ]);
    expect(readdirSync(root)).toEqual(['mix']);
  });

  it('a signal while writing removes the temporaries; with another handler present the write fails "interrupted"', async () => {
    const root = fresh();
    const out = join(root, 'mix');
    writeAdapterDir(out, 'old');
    // a listener of the program's own: the writer then cleans up without ending the process
    const mine = () => undefined;
    process.on('SIGTERM', mine);
    try {
      const e = await rejection(
        writeOutput(out, { ...adapter, force: true }, async (dir) => {
          await fillAdapter('new')(dir);
          process.emit('SIGTERM', 'SIGTERM');
          expect(readdirSync(root)).toEqual(['mix']);
        }),
      );
      expect([e.code, e.message]).toEqual([
        'interrupted',
        `the output ${out}: interrupted by SIGTERM; nothing was written`,
      ]);
      // work that goes on writing after the signal fails the same way, not with a raw ENOENT
      const late = await rejection(
        writeOutput(out, { ...adapter, force: true }, async (dir) => {
          process.emit('SIGTERM', 'SIGTERM');
          await fillAdapter('new')(dir);
        }),
      );
      expect(late.code).toBe('interrupted');
    } finally {
      process.off('SIGTERM', mine);
    }
    expect(tree(out)).toEqual({ 'adapter_config.json': 'old', 'adapter_model.safetensors': 'weights of old' });
    expect(readdirSync(root)).toEqual(['mix']);
    // no handler stays registered once nothing is in flight
    expect(process.listeners('SIGINT').map((l) => l.name)).not.toContain('onSignal');
  });
});

describe('recovery after killed runs', () => {
  it('restores an old output a killed run moved aside, removes stale temporaries, keeps those of live processes', async () => {
    const root = fresh();
    const out = join(root, 'mix');
    const dead = deadPid();
    writeAdapterDir(join(root, `.mix.${dead}.0badc0de.old`), 'old');
    writeAdapterDir(join(root, `.mix.${dead}.00000001.tmp`), 'half');
    writeFileSync(join(root, `.mix.${dead}.00000002.tmp`), 'half a file');
    const live = `.mix.${process.ppid}.00000003.tmp`;
    mkdirSync(join(root, live));
    // not of our naming: never touched
    for (const other of ['.mix.tmp-123', `.mix.${dead}.tmp`, `.other.${dead}.00000004.tmp`, 'notes.txt'])
      writeFileSync(join(root, other), 'user');
    const lines: string[] = [];
    const e = await rejection(writeOutput(out, { ...adapter, warn: (m) => lines.push(m) }, fillAdapter('new')));
    // restored first, so the existing output then needs force
    expect(e.code).toBe('exists');
    expect(lines).toEqual([
      `restored ${out}: a run killed while replacing it had left it as .mix.${dead}.0badc0de.old`,
      `removed 2 temporary file(s) left beside ${out} by killed runs`,
    ]);
    expect(tree(out)).toEqual({ 'adapter_config.json': 'old', 'adapter_model.safetensors': 'weights of old' });
    expect(readdirSync(root).sort()).toEqual(
      [live, '.mix.tmp-123', `.mix.${dead}.tmp`, `.other.${dead}.00000004.tmp`, 'mix', 'notes.txt'].sort(),
    );
    // with the output present, a moved-aside copy is stale: removed
    writeAdapterDir(join(root, `.mix.${dead}.0badc0de.old`), 'older');
    expect(await removeStaleTemporaries(out)).toEqual([
      `removed 1 temporary file(s) left beside ${out} by killed runs`,
    ]);
    expect(tree(out)['adapter_config.json']).toBe('old');
  });

  it('writeFileAtomic removes the stale temporaries of its file', async () => {
    const root = fresh();
    const dead = deadPid();
    writeFileSync(join(root, `.config.json.${dead}.abcdef01.tmp`), 'half');
    await writeFileAtomic(join(root, 'config.json'), '{}');
    expect(readdirSync(root)).toEqual(['config.json']);
  });

  it('prepareOutput leaves the work to the caller: commit publishes, abort drops', async () => {
    const root = fresh();
    const out = join(root, 'mix');
    const o = await prepareOutput(out, adapter);
    await fillAdapter('new')(o.target);
    await o.ensureSpace(1);
    await o.commit();
    await o.abort();
    expect(tree(out)['adapter_config.json']).toBe('new');
    const o2 = await prepareOutput(out, { ...adapter, force: true });
    expect(o2.replaces).toBe(true);
    await fillAdapter('newer')(o2.target);
    await o2.abort();
    await expect(o2.commit()).rejects.toThrow(/already committed or aborted/);
    expect(tree(out)['adapter_config.json']).toBe('new');
    expect(readdirSync(root)).toEqual(['mix']);
  });
});
