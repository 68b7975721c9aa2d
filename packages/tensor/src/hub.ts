/**
 * Hugging Face Hub repositories, resolved as transformers does: from the local Hub cache that
 * `huggingface_hub` writes (and Python users already have), downloading what it lacks with
 * `@huggingface/hub` into the same layout. Import from `@lora/tensor/hub` (Node only);
 * `openFiles('namespace/name')` and everything built on it (`fromPretrained`, `loadTokenizer`,
 * `loadAdapter`) come here when no directory of that name exists.
 */
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { openFileBytes } from './file-source';
import type { FileSource } from './file-source';
import { HubError } from './errors';
import {
  COMMIT_HASH,
  cachedCommit,
  hubCacheDir,
  hubOfflineFromEnv,
  hubTokenFromEnv,
  isFile,
  knownMissing,
  markMissing,
  pointerPath,
  repoFileParts,
  repoFolderName,
  writeRef,
} from './hub-cache';
import { type FetchMonitor, downloadBlob, linkPointer } from './hub-download';
import { type HubOptions, isHubRepoId } from './hub-options';

export { hubCacheDir, hubOfflineFromEnv, hubTokenFromEnv, repoFolderName } from './hub-cache';
export { isHubRepoId } from './hub-options';
export type { DownloadProgress, HubOptions } from './hub-options';
export { HubError } from './errors';
export type { HubErrorCode } from './errors';

type HubClient = typeof import('@huggingface/hub');

/** A Hub repository at one commit, read through the cache: a {@link FileSource} with the cache's paths. */
export interface HubRepoSource extends FileSource {
  repo: string;
  revision: string;
  /** The commit the revision resolved to; every file comes from this snapshot. */
  commit: string;
  /** `<cache>/models--…/snapshots/<commit>`: a directory transformers and PEFT load as well. */
  snapshot: string;
  /** True when nothing will be downloaded (offline, or the Hub could not be reached). */
  offline: boolean;
  /** The file's path in the snapshot, downloading it first if the cache lacks it. */
  path(name: string): Promise<string>;
  open(name: string): ReturnType<NonNullable<FileSource['open']>>;
}

interface Remote {
  sha: string;
  files: Set<string>;
}

/** A fetch with a deadline for the Hub's answer, the caller's signal, the token sent to the Hub only, and failures recorded. */
function hubFetch(
  base: typeof fetch,
  hubUrl: string,
  token: string | undefined,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  monitor: FetchMonitor,
): typeof fetch {
  const hubOrigin = new URL(hubUrl).origin;
  return async (input, init = {}) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    const headers = new Headers(init.headers);
    if (token && !headers.has('Authorization') && new URL(url).origin === hubOrigin)
      headers.set('Authorization', `Bearer ${token}`);
    const deadline = new AbortController();
    const timer = setTimeout(
      () => deadline.abort(new Error(`no answer from ${url} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const signals = [deadline.signal, signal, init.signal].filter((s): s is AbortSignal => !!s);
    let res: Response;
    try {
      res = await base(input, { ...init, headers, signal: AbortSignal.any(signals) });
    } finally {
      clearTimeout(timer);
    }
    if (!res.ok) monitor.failure = { status: res.status, url: res.url || url };
    // a resumed download must continue where the partial file ends, or its bytes would be appended twice
    const from = /^bytes=(\d+)-/.exec(headers.get('Range') ?? '')?.[1];
    if (from !== undefined && Number(from) > 0 && res.ok) {
      const start = /^bytes (\d+)-/.exec(res.headers.get('Content-Range') ?? '')?.[1];
      if (res.status !== 206 || start !== from) {
        await res.body?.cancel().catch(() => undefined);
        monitor.failure = { status: res.status, url: res.url || url, rangeIgnored: true };
        throw new Error(`${url} ignored the request for bytes from ${from} (status ${res.status})`);
      }
    }
    return res;
  };
}

function timeoutFromEnv(): number | undefined {
  const s = Number(process.env.HF_HUB_ETAG_TIMEOUT);
  return Number.isFinite(s) && s > 0 ? s * 1000 : undefined;
}

function describeFailure(e: unknown): string {
  const err = e as Error & { cause?: { code?: string; message?: string } };
  return err?.cause?.code ? `${err.message}: ${err.cause.code}` : `${err?.message ?? e}`;
}

/**
 * Opens a Hub repository at a revision (default `main`) through the local cache: files already in the
 * snapshot are used as they are, missing ones are downloaded into the cache (unless offline). Online,
 * one request resolves the revision to its commit (as `snapshot_download` does) so that all files come
 * from one commit; offline (`localFilesOnly`, `HF_HUB_OFFLINE=1`) or when the Hub cannot be reached, the
 * commit comes from the cache's `refs/<revision>`, as huggingface_hub falls back.
 *
 * @example
 * ```ts
 * import { openHubRepo } from '@lora/tensor/hub';
 * const repo = await openHubRepo('HuggingFaceTB/SmolLM-135M', { onProgress: (p) => console.log(p.file, p.loaded, p.total) });
 * const configPath = await repo.path('config.json'); // ~/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM-135M/snapshots/<sha>/config.json
 * ```
 */
export async function openHubRepo(repo: string, options: HubOptions = {}): Promise<HubRepoSource> {
  if (!isHubRepoId(repo))
    throw new HubError(
      'invalid',
      repo,
      undefined,
      `'${repo}' is not a Hub repo id: use 'namespace/name' (letters, digits, '-', '_', '.'), or pass a local directory`,
    );
  const revision = options.revision ?? 'main';
  const cacheDir = options.cacheDir ?? hubCacheDir();
  const storage = join(cacheDir, repoFolderName(repo));
  const hubUrl = (options.hubUrl ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
  const token = options.token === false ? undefined : (options.token ?? (await hubTokenFromEnv()));
  const monitor: FetchMonitor = {};
  const fetchFn = hubFetch(
    options.fetch ?? globalThis.fetch,
    hubUrl,
    token,
    options.timeoutMs ?? timeoutFromEnv() ?? 10_000,
    options.signal,
    monitor,
  );
  const localOnly = options.localFilesOnly === true || hubOfflineFromEnv();
  const offlineWhy = localOnly
    ? `outgoing traffic is disabled (${options.localFilesOnly ? 'localFilesOnly: true' : 'HF_HUB_OFFLINE'})`
    : undefined;
  let client: HubClient | undefined;
  const hubClient = async () => {
    client ??= await import('@huggingface/hub');
    return client;
  };
  const where = `the Hub cache at ${storage}`;

  const fail = (e: unknown, file?: string): never => {
    if (options.signal?.aborted)
      throw new HubError('aborted', repo, file, `resolving ${repo} was aborted`, { cause: e });
    const status = (e as { statusCode?: number }).statusCode;
    if (status === 401 || status === 403)
      throw new HubError(
        'unauthorized',
        repo,
        file,
        `${hubUrl} refused access to ${repo} (HTTP ${status}): it is private or gated; pass a token with access (options.token, HF_TOKEN, or \`hf auth login\`)${token ? ', the one sent was refused' : ''}`,
        { cause: e },
      );
    if (status === 404)
      throw new HubError(
        'not-found',
        repo,
        file,
        `${hubUrl} has no repo '${repo}' at revision '${revision}' (HTTP 404), and ${where} has none: check the id and revision (a private repo needs a token), or pass a local directory`,
        { cause: e },
      );
    throw new HubError(
      'network',
      repo,
      file,
      `cannot reach ${hubUrl} (${describeFailure(e)}), and ${where} has no snapshot for revision '${revision}': connect, set HF_ENDPOINT to a mirror, or fill the cache elsewhere (\`hf download ${repo}\`) and copy it`,
      { cause: e },
    );
  };

  let remote: Promise<Remote> | undefined;
  const remoteInfo = (commitOrRevision: string): Promise<Remote> => {
    remote ??= (async () => {
      const info = await (await hubClient()).modelInfo({
        name: repo,
        revision: commitOrRevision,
        additionalFields: ['sha', 'filePaths'],
        hubUrl,
        fetch: fetchFn,
      });
      if (!COMMIT_HASH.test(info.sha ?? ''))
        throw new Error(
          `${hubUrl} answered revision '${commitOrRevision}' with commit '${info.sha}', not a 40-hex hash`,
        );
      return { sha: info.sha, files: new Set(info.filePaths ?? []) };
    })();
    return remote;
  };

  let resolved: string | undefined;
  let offline = localOnly;
  let unreachable: unknown;
  if (COMMIT_HASH.test(revision)) resolved = revision;
  else if (localOnly) resolved = await cachedCommit(storage, revision);
  else {
    try {
      resolved = (await remoteInfo(revision)).sha;
    } catch (e) {
      if (options.signal?.aborted) fail(e);
      // as huggingface_hub: when the Hub cannot answer, what the cache has is used
      resolved = await cachedCommit(storage, revision);
      if (!resolved) fail(e);
      offline = true;
      unreachable = e;
    }
  }
  if (!resolved) {
    throw new HubError(
      'not-cached',
      repo,
      undefined,
      `${repo} (revision '${revision}') is not in ${where} (no refs/${revision}) and ${offlineWhy}: run once online, or \`hf download ${repo}\` (Python) to fill the cache`,
    );
  }
  const commit = resolved;
  const snapshot = join(storage, 'snapshots', commit);
  // best effort, as huggingface_hub: a read-only cache still serves what it holds
  if (!offline) await writeRef(storage, revision, commit).catch(() => undefined);

  const notCached = (file: string): HubError =>
    new HubError(
      'not-cached',
      repo,
      file,
      `'${file}' of ${repo} at ${commit} is not in ${where}, and ${offlineWhy ?? `the Hub could not be reached (${describeFailure(unreachable)})`}`,
      ...(unreachable ? [{ cause: unreachable }] : []),
    );

  const has = async (name: string): Promise<boolean> => {
    const parts = repoFileParts(repo, name);
    if (await isFile(pointerPath(storage, commit, parts))) return true;
    if (offline || (await knownMissing(storage, commit, parts))) return false;
    let files: Set<string>;
    try {
      files = (await remoteInfo(commit)).files;
    } catch (e) {
      return fail(e, name);
    }
    if (!files.has(name)) await markMissing(storage, commit, parts);
    return files.has(name);
  };

  const path = async (name: string): Promise<string> => {
    const parts = repoFileParts(repo, name);
    const pointer = pointerPath(storage, commit, parts);
    if (await isFile(pointer)) return pointer;
    if (offline) throw notCached(name);
    let entry: { oid?: string; size: number; lfs?: { oid: string; size: number } } | undefined;
    try {
      const infos = await (await hubClient()).pathsInfo({
        repo: { type: 'model', name: repo },
        paths: [name],
        revision: commit,
        hubUrl,
        fetch: fetchFn,
      });
      entry = infos.find((i) => i.path === name && i.type === 'file');
    } catch (e) {
      fail(e, name);
    }
    if (!entry) {
      await markMissing(storage, commit, parts);
      throw new HubError('not-found', repo, name, `${repo} has no file '${name}' at ${revision} (commit ${commit})`);
    }
    const etag = entry.lfs?.oid ?? entry.oid;
    if (!etag || !/^[0-9a-zA-Z._-]+$/.test(etag))
      throw new HubError('network', repo, name, `${hubUrl} gave '${name}' no usable id (oid ${JSON.stringify(etag)})`);
    const blob = await downloadBlob({
      client: await hubClient(),
      repo,
      file: name,
      commit,
      cacheDir,
      etag,
      size: entry.lfs?.size ?? entry.size,
      hubUrl,
      fetch: fetchFn,
      monitor,
      signal: options.signal,
      onProgress: options.onProgress,
    });
    await linkPointer(blob, pointer);
    return pointer;
  };

  return {
    label: snapshot,
    repo,
    revision,
    commit,
    snapshot,
    offline,
    path,
    has,
    bytes: async (name) => new Uint8Array(await readFile(await path(name))),
    text: async (name) => readFile(await path(name), 'utf8'),
    list: async () => {
      if (!offline) {
        try {
          return [...(await remoteInfo(commit)).files];
        } catch (e) {
          fail(e);
        }
      }
      return readdir(snapshot).catch(() => []);
    },
    open: async (name) => openFileBytes(await path(name)),
  };
}

/**
 * One file of a Hub repository, as huggingface_hub's `hf_hub_download`: its path in the cache's
 * snapshot, downloaded first when the cache lacks it.
 *
 * @example
 * ```ts
 * import { hubFile } from '@lora/tensor/hub';
 * const path = await hubFile('HuggingFaceTB/SmolLM-135M', 'config.json', { localFilesOnly: true });
 * ```
 */
export async function hubFile(repo: string, file: string, options: HubOptions = {}): Promise<string> {
  return (await openHubRepo(repo, options)).path(file);
}
