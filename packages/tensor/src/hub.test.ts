import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readFile, readlink, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { type DownloadProgress, HubError, hubCacheDir, hubFile, isHubRepoId, openHubRepo } from '@lora/tensor/hub';
import { type FakeHub, startFakeHub } from '@lora/tensor/testing';
import { openFiles } from './file-source';

const here = import.meta.dirname;
const sha1 = (s: string) => createHash('sha1').update(s).digest('hex');
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Deterministic bytes, large enough that a drop or an abort lands in the middle. */
function payload(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) out[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
  return out;
}

const WEIGHTS = payload(300_000);
/** Byte equality in one comparison (a deep toEqual over 300 000 elements takes seconds). */
const expectWeights = (bytes: Uint8Array) => expect(sha256(bytes)).toBe(sha256(WEIGHTS));
const REPO = {
  id: 'lora-test/tiny',
  files: { 'config.json': '{"model_type":"llama"}', 'model.safetensors': WEIGHTS, 'empty.txt': '' },
};
/** A fetch for tests that must never reach the network. */
const noNetwork = vi.fn(async (): Promise<Response> => {
  throw new Error('the network was used');
});

let cache: string;
let hub: FakeHub | undefined;
beforeEach(async () => {
  cache = await mkdtemp(join(tmpdir(), 'lora-hub-'));
  noNetwork.mockClear();
});
afterEach(async () => {
  await hub?.close();
  hub = undefined;
  vi.unstubAllEnvs();
  await rm(cache, { recursive: true, force: true });
});

describe('the Hub cache location and repo ids, as huggingface_hub', () => {
  it('follows HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME, XDG_CACHE_HOME, then ~/.cache', () => {
    expect(hubCacheDir({ HF_HUB_CACHE: '/a', HUGGINGFACE_HUB_CACHE: '/b', HF_HOME: '/c' })).toBe('/a');
    expect(hubCacheDir({ HUGGINGFACE_HUB_CACHE: '/b', HF_HOME: '/c' })).toBe('/b');
    expect(hubCacheDir({ HF_HOME: '/c', XDG_CACHE_HOME: '/x' })).toBe('/c/hub');
    expect(hubCacheDir({ XDG_CACHE_HOME: '/x' })).toBe('/x/huggingface/hub');
    expect(hubCacheDir({})).toMatch(/\.cache\/huggingface\/hub$/);
  });

  it('tells repo ids from paths by huggingface_hub rules', () => {
    for (const id of ['gpt2', 'HuggingFaceTB/SmolLM-135M', 'a/b.c_d-e', 'x']) expect(isHubRepoId(id), id).toBe(true);
    for (const id of ['./m', '/abs/dir', 'a/b/c', 'a--b/c', 'a/..b', 'a/-b', 'a/b.', 'a/b.git', '', 'a b', 'café/x'])
      expect(isHubRepoId(id), id).toBe(false);
  });
});

/** Writes a cache entry as huggingface_hub lays it out: blobs/<etag>, snapshots/<commit>/<file> → ../../blobs/<etag>, refs. */
async function cacheRepo(root: string, repo: string, commit: string, files: Record<string, string>, refs = ['main']) {
  const storage = join(root, `models--${repo.replace('/', '--')}`);
  await mkdir(join(storage, 'blobs'), { recursive: true });
  await mkdir(join(storage, 'snapshots', commit), { recursive: true });
  for (const [name, content] of Object.entries(files)) {
    const etag = sha1(`${repo}:${name}:${content}`);
    await writeFile(join(storage, 'blobs', etag), content);
    await symlink(join('..', '..', 'blobs', etag), join(storage, 'snapshots', commit, name));
  }
  await mkdir(join(storage, 'refs'), { recursive: true });
  for (const ref of refs) await writeFile(join(storage, 'refs', ref), commit);
  return storage;
}

describe('resolving from the cache without the network', () => {
  const commit = sha1('c1');
  const older = sha1('c0');

  it('reads refs/<revision> → snapshots/<commit> with localFilesOnly, and never fetches', async () => {
    await cacheRepo(cache, 'org/model', commit, { 'config.json': '{"v":1}', 'tokenizer.json': '{}' }, ['main', 'v1.0']);
    await cacheRepo(cache, 'org/model', older, { 'config.json': '{"v":0}' }, ['old']);
    const opts = { cacheDir: cache, localFilesOnly: true, fetch: noNetwork };
    const repo = await openHubRepo('org/model', opts);
    expect(repo.commit).toBe(commit);
    expect(repo.snapshot).toBe(join(cache, 'models--org--model', 'snapshots', commit));
    expect(await repo.text('config.json')).toBe('{"v":1}');
    expect(await repo.has('tokenizer.json')).toBe(true);
    expect(await repo.has('model.safetensors')).toBe(false);
    expect((await repo.list()).sort()).toEqual(['config.json', 'tokenizer.json']);
    expect(await (await openHubRepo('org/model', { ...opts, revision: 'v1.0' })).text('config.json')).toBe('{"v":1}');
    expect(await (await openHubRepo('org/model', { ...opts, revision: 'old' })).text('config.json')).toBe('{"v":0}');
    // a full commit hash names a snapshot directly, no ref needed
    expect(await (await openHubRepo('org/model', { ...opts, revision: older })).text('config.json')).toBe('{"v":0}');
    expect(noNetwork).not.toHaveBeenCalled();
  });

  it('HF_HUB_OFFLINE=1 and HF_HUB_CACHE do the same through openFiles', async () => {
    await cacheRepo(cache, 'org/model', commit, { 'config.json': '{"v":1}' });
    vi.stubEnv('HF_HUB_CACHE', cache);
    vi.stubEnv('HF_HUB_OFFLINE', '1');
    const files = await openFiles('org/model', { fetch: noNetwork });
    expect(await files.text('config.json')).toBe('{"v":1}');
    expect(noNetwork).not.toHaveBeenCalled();
  });

  it('fails offline with a HubError naming the cache and the fix', async () => {
    const err = await openHubRepo('org/absent', { cacheDir: cache, localFilesOnly: true, fetch: noNetwork }).catch(
      (e) => e,
    );
    expect(err).toBeInstanceOf(HubError);
    expect(err.code).toBe('not-cached');
    expect(err.message).toContain(join(cache, 'models--org--absent'));
    expect(err.message).toContain('localFilesOnly');
    await cacheRepo(cache, 'org/model', commit, { 'config.json': '{}' });
    const repo = await openHubRepo('org/model', { cacheDir: cache, localFilesOnly: true, fetch: noNetwork });
    await expect(repo.path('model.safetensors')).rejects.toMatchObject({
      code: 'not-cached',
      file: 'model.safetensors',
    });
    expect(noNetwork).not.toHaveBeenCalled();
  });

  it('falls back to the cache when the Hub cannot be reached, as huggingface_hub does', async () => {
    await cacheRepo(cache, 'org/model', commit, { 'config.json': '{"v":1}' });
    const repo = await openHubRepo('org/model', { cacheDir: cache, fetch: noNetwork });
    expect(noNetwork).toHaveBeenCalled();
    expect(repo.offline).toBe(true);
    expect(await repo.text('config.json')).toBe('{"v":1}');
    const err = await openHubRepo('org/other', { cacheDir: cache, fetch: noNetwork }).catch((e) => e);
    expect(err).toMatchObject({ code: 'network' });
    expect(err.message).toContain('the network was used');
  });

  it('rejects file names that would leave the snapshot', async () => {
    await cacheRepo(cache, 'org/model', commit, { 'config.json': '{}' });
    const repo = await openHubRepo('org/model', { cacheDir: cache, localFilesOnly: true });
    for (const bad of ['../../blobs/x', '/etc/passwd', 'a//b', 'a\\b'])
      await expect(repo.path(bad), bad).rejects.toMatchObject({ code: 'invalid' });
  });
});

describe('downloading into the cache from a Hub-shaped server', () => {
  it('writes blobs, snapshot symlinks and refs as huggingface_hub, with progress; then needs no download', async () => {
    hub = await startFakeHub([REPO]);
    const progress: DownloadProgress[] = [];
    const repo = await openHubRepo(REPO.id, { cacheDir: cache, hubUrl: hub.url, onProgress: (p) => progress.push(p) });
    const storage = join(cache, 'models--lora-test--tiny');
    expect(await readFile(join(storage, 'refs', 'main'), 'utf8')).toBe(repo.commit);
    const weights = await repo.path('model.safetensors');
    expect(weights).toBe(join(storage, 'snapshots', repo.commit, 'model.safetensors'));
    expect(await readlink(weights)).toBe(join('..', '..', 'blobs', sha256(WEIGHTS)));
    expectWeights(await readFile(weights));
    expect(await repo.text('config.json')).toBe(REPO.files['config.json']);
    expect(await readdir(join(storage, 'blobs'))).toEqual([sha256(WEIGHTS), hub.etag(REPO.id, 'config.json')].sort());
    // LFS data came from the CDN's origin, after the Hub's redirect
    expect(hub.requests.some((r) => r.origin === 'cdn' && r.url === `/blobs/${sha256(WEIGHTS)}`)).toBe(true);
    const mine = progress.filter((p) => p.file === 'model.safetensors');
    expect(mine[0]).toMatchObject({ loaded: 0, total: WEIGHTS.length, resumedFrom: 0, done: false });
    expect(mine.at(-1)).toMatchObject({ loaded: WEIGHTS.length, done: true });
    // the files are in the cache now: another open reads them without downloading anything
    const before = hub.requests.length;
    const again = await openHubRepo(REPO.id, { cacheDir: cache, hubUrl: hub.url });
    expectWeights(await again.bytes('model.safetensors'));
    expect(hub.requests.slice(before).map((r) => r.url)).toEqual([`/api/models/${REPO.id}/revision/main`]);
    // and offline as well
    const offline = await openHubRepo(REPO.id, { cacheDir: cache, localFilesOnly: true, fetch: noNetwork });
    expectWeights(await offline.bytes('model.safetensors'));
  });

  it('answers has() from the repo listing and records missing files in .no_exist for offline runs', async () => {
    hub = await startFakeHub([REPO]);
    const repo = await openHubRepo(REPO.id, { cacheDir: cache, hubUrl: hub.url });
    expect(await repo.has('model.safetensors.index.json')).toBe(false);
    expect(await repo.has('model.safetensors')).toBe(true);
    const marker = join(cache, 'models--lora-test--tiny', '.no_exist', repo.commit, 'model.safetensors.index.json');
    expect((await stat(marker)).isFile()).toBe(true);
    await expect(repo.path('nope.bin')).rejects.toMatchObject({ code: 'not-found' });
  });

  it('resumes a partial .incomplete blob with a Range request', async () => {
    hub = await startFakeHub([REPO]);
    const blobs = join(cache, 'models--lora-test--tiny', 'blobs');
    await mkdir(blobs, { recursive: true });
    await writeFile(join(blobs, `${sha256(WEIGHTS)}.incomplete`), WEIGHTS.subarray(0, 123_456));
    const progress: DownloadProgress[] = [];
    const path = await hubFile(REPO.id, 'model.safetensors', {
      cacheDir: cache,
      hubUrl: hub.url,
      onProgress: (p) => progress.push(p),
    });
    expectWeights(await readFile(path));
    expect(hub.requests.filter((r) => r.origin === 'cdn' && r.range === 'bytes=123456-299999')).toHaveLength(1);
    expect(progress[0]).toMatchObject({ loaded: 123_456, resumedFrom: 123_456 });
    expect(await readdir(blobs)).toEqual([sha256(WEIGHTS)]);
  });

  it('continues after dropped connections within one call', async () => {
    hub = await startFakeHub([REPO]);
    hub.faults.drop = { file: 'model.safetensors', afterBytes: 70_000, times: 3 };
    const path = await hubFile(REPO.id, 'model.safetensors', { cacheDir: cache, hubUrl: hub.url });
    expectWeights(await readFile(path));
    const ranges = hub.requests.filter((r) => r.origin === 'cdn' && r.range && r.range !== 'bytes=0-0');
    expect(ranges.map((r) => r.range)).toEqual(['bytes=70000-299999', 'bytes=140000-299999', 'bytes=210000-299999']);
  });

  it('starts over when the server ignores Range, and never appends the file twice', async () => {
    hub = await startFakeHub([REPO]);
    hub.faults.ignoreRange = true;
    const blobs = join(cache, 'models--lora-test--tiny', 'blobs');
    await mkdir(blobs, { recursive: true });
    await writeFile(join(blobs, `${sha256(WEIGHTS)}.incomplete`), WEIGHTS.subarray(0, 5000));
    const path = await hubFile(REPO.id, 'model.safetensors', { cacheDir: cache, hubUrl: hub.url });
    expectWeights(await readFile(path));
  });

  it('keeps the partial file when aborted; the next call resumes it', async () => {
    hub = await startFakeHub([REPO]);
    hub.faults.stall = { file: 'model.safetensors', afterBytes: 100_000 };
    const controller = new AbortController();
    const partial = join(cache, 'models--lora-test--tiny', 'blobs', `${sha256(WEIGHTS)}.incomplete`);
    const pending = hubFile(REPO.id, 'model.safetensors', {
      cacheDir: cache,
      hubUrl: hub.url,
      signal: controller.signal,
    });
    // abort once the stalled server has delivered its bytes
    for (let i = 0; i < 200 && ((await stat(partial).catch(() => null))?.size ?? 0) < 100_000; i++)
      await new Promise((r) => setTimeout(r, 10));
    controller.abort();
    await expect(pending).rejects.toMatchObject({ code: 'aborted' });
    expect((await stat(partial)).size).toBe(100_000);
    hub.faults.stall = undefined;
    const path = await hubFile(REPO.id, 'model.safetensors', { cacheDir: cache, hubUrl: hub.url });
    expectWeights(await readFile(path));
    expect(hub.requests.some((r) => r.range === 'bytes=100000-299999')).toBe(true);
  });

  it('refuses a download whose hash does not match, leaving no blob and no partial file', async () => {
    hub = await startFakeHub([REPO]);
    hub.faults.corrupt = { file: 'model.safetensors' };
    const err = await hubFile(REPO.id, 'model.safetensors', { cacheDir: cache, hubUrl: hub.url }).catch((e) => e);
    expect(err).toMatchObject({ code: 'corrupt', file: 'model.safetensors' });
    expect(await readdir(join(cache, 'models--lora-test--tiny', 'blobs'))).toEqual([]);
    await expect(lstat(join(cache, 'models--lora-test--tiny', 'snapshots'))).rejects.toThrow();
  });

  it('sends the token (options, HF_TOKEN, or the token file) to the Hub only, and says when access is refused', async () => {
    hub = await startFakeHub([{ ...REPO, id: 'org/private', token: 'hf_secret' }]);
    const base = { cacheDir: cache, hubUrl: hub.url };
    await expect(openHubRepo('org/private', { ...base, token: false })).rejects.toMatchObject({ code: 'unauthorized' });
    await expect(openHubRepo('org/private', { ...base, token: 'hf_wrong' })).rejects.toMatchObject({
      code: 'unauthorized',
    });
    vi.stubEnv('HF_TOKEN', 'hf_secret');
    expectWeights(await (await openHubRepo('org/private', base)).bytes('model.safetensors'));
    vi.stubEnv('HF_TOKEN', '');
    const home = join(cache, 'home');
    await mkdir(home);
    await writeFile(join(home, 'token'), 'hf_secret\n');
    vi.stubEnv('HF_HOME', home);
    expect(await (await openHubRepo('org/private', base)).text('config.json')).toBe(REPO.files['config.json']);
    // the CDN, another origin, never sees the token
    expect(hub.requests.filter((r) => r.origin === 'cdn').every((r) => r.authorization === undefined)).toBe(true);
    expect(hub.requests.some((r) => r.origin === 'hub' && r.authorization === 'Bearer hf_secret')).toBe(true);
  });

  it('says what is wrong for an unknown repo or revision', async () => {
    hub = await startFakeHub([REPO]);
    const base = { cacheDir: cache, hubUrl: hub.url };
    const err = await openHubRepo('lora-test/absent', base).catch((e) => e);
    expect(err).toMatchObject({ code: 'not-found', repo: 'lora-test/absent' });
    expect(err.message).toContain('HTTP 404');
    await expect(openHubRepo(REPO.id, { ...base, revision: 'nope' })).rejects.toMatchObject({ code: 'not-found' });
  });

  it('reads a repo huggingface_hub (Python) downloaded: the committed fixture cache', async () => {
    const fixture = join(here, '..', '__fixtures__', 'hf-cache');
    const manifest = JSON.parse(await readFile(join(fixture, 'manifest.json'), 'utf8')) as {
      repos: Record<string, { commit: string; files: Record<string, string> }>;
    };
    for (const [id, { commit, files }] of Object.entries(manifest.repos)) {
      const repo = await openHubRepo(id, { cacheDir: fixture, localFilesOnly: true, fetch: noNetwork });
      expect(repo.commit).toBe(commit);
      for (const [name, digest] of Object.entries(files)) expect(sha256(await repo.bytes(name)), name).toBe(digest);
    }
    expect(noNetwork).not.toHaveBeenCalled();
  });
});
