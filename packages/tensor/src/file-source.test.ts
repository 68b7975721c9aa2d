import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileAccessError, openFiles } from '@lora/tensor';

// A checkpoint directory's file names come from untrusted files (a sharded index): none may reach outside it.
describe('openFiles on a directory keeps reads inside it', () => {
  let root: string;
  let dir: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'lora-files-'));
    dir = join(root, 'model');
    await mkdir(dir);
    await writeFile(join(root, 'secret.txt'), 'outside');
    await writeFile(join(dir, 'config.json'), '{}');
    await symlink(join(root, 'secret.txt'), join(dir, 'link.json'));
    await mkdir(join(dir, 'sub'));
    await writeFile(join(dir, 'sub', 'inner.json'), '"in"');
    await symlink(join(dir, 'config.json'), join(dir, 'alias.json'));
  });
  afterAll(() => rm(root, { recursive: true, force: true }));

  it('reads plain files, files in sub-folders and links that stay inside', async () => {
    const files = await openFiles(dir);
    expect(await files.text('config.json')).toBe('{}');
    expect(await files.text('sub/inner.json')).toBe('"in"');
    expect(await files.text('alias.json')).toBe('{}');
  });

  it('refuses a link to a file outside, with text, bytes and open alike', async () => {
    const files = await openFiles(dir);
    for (const read of [() => files.text('link.json'), () => files.bytes('link.json'), () => files.open?.('link.json')])
      await expect(read()).rejects.toThrow(
        /link\.json: is a link to .*secret\.txt, outside the directory .*copy the file in/,
      );
    await expect(files.text('link.json')).rejects.toBeInstanceOf(FileAccessError);
  });

  it('refuses names that climb out or are absolute', async () => {
    const files = await openFiles(dir, { what: 'model directory' });
    await expect(files.text('../secret.txt')).rejects.toThrow(
      /'\.\.\/secret\.txt' is not a file name inside the model directory/,
    );
    await expect(files.bytes(join(root, 'secret.txt'))).rejects.toThrow(/is not a file name inside/);
    await expect(files.text('sub/../../secret.txt')).rejects.toThrow(FileAccessError);
  });

  it("follows a Hub cache snapshot's links into its blobs folder", async () => {
    const entry = join(root, 'hub', 'models--org--name');
    const snap = join(entry, 'snapshots', 'abc123');
    await mkdir(join(entry, 'blobs'), { recursive: true });
    await mkdir(snap, { recursive: true });
    await writeFile(join(entry, 'blobs', 'deadbeef'), '{"ok":true}');
    await symlink('../../blobs/deadbeef', join(snap, 'config.json'));
    await symlink(join(root, 'secret.txt'), join(snap, 'evil.json'));
    const files = await openFiles(snap);
    expect(JSON.parse(await files.text('config.json'))).toEqual({ ok: true });
    await expect(files.text('evil.json')).rejects.toThrow(/outside the directory/);
  });

  it('reports a missing file as the FileAccessError it was', async () => {
    const files = await openFiles(dir);
    await expect(files.text('nope.json')).rejects.toThrow(/nope\.json/);
    await expect(files.text('nope.json')).rejects.toBeInstanceOf(FileAccessError);
  });
});
