/**
 * Downloads one file of a Hub repository into the cache's `blobs/`, through `@huggingface/hub`'s client,
 * with progress, verification and resume: bytes arrive in `blobs/<etag>.incomplete`, which survives an
 * interrupted download (an abort, a lost connection, a killed process) and is continued with an HTTP
 * Range request by the next attempt or call, then renamed onto `blobs/<etag>` once size and hash check.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, open, rename, rm, stat, symlink, truncate } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { HubError } from './errors';
import { isFile, repoFolderName, withLock } from './hub-cache';
import type { DownloadProgress } from './hub-options';

type HubClient = typeof import('@huggingface/hub');

/** What {@link downloadBlob} needs: the file, where it goes, and how to talk to the Hub. */
export interface BlobRequest {
  client: HubClient;
  repo: string;
  file: string;
  commit: string;
  cacheDir: string;
  /** The blob's name: the LFS sha256, or the git blob id of a small file. */
  etag: string;
  size: number;
  hubUrl: string;
  /** A fetch that enforces timeouts and the caller's signal, and records failed responses in `monitor` (see hub.ts). */
  fetch: typeof fetch;
  /** Where the fetch records the last failed response (the client's streams keep only an error's message). */
  monitor: FetchMonitor;
  signal: AbortSignal | undefined;
  onProgress: ((p: DownloadProgress) => void) | undefined;
}

/** What the fetch of hub.ts saw go wrong last: a non-OK status, or a resuming Range request answered with the whole file. */
export interface FetchMonitor {
  failure?: { status: number; url: string; rangeIgnored?: boolean };
}

/** Consecutive attempts that bring no new byte before a download gives up (huggingface_hub's figure). */
const RETRIES = 5;
/** Progress is reported at most once a MiB (and at the start and the end). */
const PROGRESS_STEP = 2 ** 20;

/**
 * How a blob is verified: an LFS file's etag is the sha256 of its bytes; a small file's is its git blob
 * id, the sha1 of `blob <size>\0` and its bytes.
 */
function hasherFor(etag: string, size: number): { update(b: Uint8Array): void; matches(): boolean } | undefined {
  if (/^[0-9a-f]{64}$/.test(etag)) {
    const h = createHash('sha256');
    return { update: (b) => h.update(b), matches: () => h.digest('hex') === etag };
  }
  if (/^[0-9a-f]{40}$/.test(etag)) {
    const h = createHash('sha1').update(`blob ${size}\0`);
    return { update: (b) => h.update(b), matches: () => h.digest('hex') === etag };
  }
  return undefined;
}

/** Makes `pointer` (a snapshot's file) a relative symlink to `blob`, as huggingface_hub does; a copy where symlinks cannot be made. */
export async function linkPointer(blob: string, pointer: string): Promise<void> {
  await mkdir(dirname(pointer), { recursive: true });
  await rm(pointer, { force: true });
  try {
    await symlink(relative(dirname(pointer), blob), pointer);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return; // another process linked it meanwhile
    await copyFile(blob, pointer);
  }
}

function aborted(r: BlobRequest, cause: unknown): HubError {
  return new HubError(
    'aborted',
    r.repo,
    r.file,
    `download of '${r.file}' from ${r.repo} was aborted; the partial file is kept and the next call resumes it`,
    { cause },
  );
}

/** Downloads the blob unless the cache has it; returns its path in `blobs/`. */
export async function downloadBlob(r: BlobRequest): Promise<string> {
  const storage = join(r.cacheDir, repoFolderName(r.repo));
  const blob = join(storage, 'blobs', r.etag);
  if (await isFile(blob)) return blob;
  await mkdir(dirname(blob), { recursive: true });
  const lock = join(r.cacheDir, '.locks', repoFolderName(r.repo), `${r.etag}.lock`);
  return withLock(lock, r.signal, async () => {
    if (await isFile(blob)) return blob; // another process finished it while we waited
    await fetchInto(r, `${blob}.incomplete`);
    await rename(`${blob}.incomplete`, blob);
    return blob;
  });
}

async function fetchInto(r: BlobRequest, partial: string): Promise<void> {
  let have = (await stat(partial).catch(() => null))?.size ?? 0;
  if (have > r.size) {
    await truncate(partial, 0);
    have = 0;
  }
  const resumedFrom = have;
  let hash = hasherFor(r.etag, r.size);
  if (hash && have > 0) for await (const chunk of createReadStream(partial)) hash.update(chunk as Buffer);
  let reported = -1;
  const report = (done: boolean) => {
    if (!r.onProgress || (!done && reported >= 0 && have - reported < PROGRESS_STEP)) return;
    reported = have;
    r.onProgress({ repo: r.repo, file: r.file, loaded: have, total: r.size, resumedFrom, done });
  };
  report(false);
  if (r.size === 0) {
    // nothing to fetch (a Range probe of an empty file is unsatisfiable): the hash below still checks the id
    await (await open(partial, 'w')).close();
    if (hash && !hash.matches())
      throw new HubError('corrupt', r.repo, r.file, `'${r.file}' from ${r.repo} is empty but its id is ${r.etag}`);
    report(true);
    return;
  }
  let remote: Blob | null;
  try {
    remote = await r.client.downloadFile({
      repo: { type: 'model', name: r.repo },
      path: r.file,
      revision: r.commit,
      hubUrl: r.hubUrl,
      // the token travels in r.fetch, which sends it to the Hub's origin only
      fetch: r.fetch,
      // plain HTTP (the Hub redirects Xet-stored files to a CDN that serves them so): Range resumes it
      xet: false,
    });
  } catch (e) {
    if (r.signal?.aborted) throw aborted(r, e);
    throw new HubError(
      'network',
      r.repo,
      r.file,
      `cannot download '${r.file}' from ${r.repo}: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  if (!remote)
    throw new HubError('not-found', r.repo, r.file, `${r.repo} has no file '${r.file}' at commit ${r.commit}`);
  let attemptsLeft = RETRIES;
  while (have < r.size) {
    const file = await open(partial, 'a');
    const before = have;
    r.monitor.failure = undefined;
    try {
      const reader = (have > 0 ? remote.slice(have) : remote).stream().getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (have + value.length > r.size) {
          await reader.cancel().catch(() => undefined);
          throw new HubError(
            'corrupt',
            r.repo,
            r.file,
            `the Hub sent more than the ${r.size} bytes it announced for '${r.file}'`,
          );
        }
        await file.write(value);
        hash?.update(value);
        have += value.length;
        report(false);
      }
      if (have < r.size) throw new Error(`the connection closed after ${have} of ${r.size} bytes`);
    } catch (e) {
      if (r.signal?.aborted) throw aborted(r, e);
      if (e instanceof HubError) {
        await rm(partial, { force: true });
        throw e;
      }
      // set by the fetch during the attempt (TypeScript cannot see that)
      const failure = r.monitor.failure as FetchMonitor['failure'];
      const rangeFailed = failure?.rangeIgnored === true || failure?.status === 416;
      if (failure && !rangeFailed && failure.status !== 408 && failure.status !== 429 && failure.status < 500) {
        throw new HubError(
          failure.status === 401 || failure.status === 403 ? 'unauthorized' : 'not-found',
          r.repo,
          r.file,
          `the Hub answered ${failure.status} for '${r.file}' of ${r.repo} (${failure.url})`,
          { cause: e },
        );
      }
      if (rangeFailed) {
        // the server cannot continue this partial file: start it over
        await file.close();
        await truncate(partial, 0);
        have = 0;
        hash = hasherFor(r.etag, r.size);
      }
      if (have === before && --attemptsLeft <= 0) {
        throw new HubError(
          'network',
          r.repo,
          r.file,
          `downloading '${r.file}' from ${r.repo} failed ${RETRIES} times in a row (${(e as Error)?.message ?? e}); the ${have} bytes received are kept in ${partial} and the next call resumes from there`,
          { cause: e },
        );
      }
      if (have > before) attemptsLeft = RETRIES;
    } finally {
      await file.close().catch(() => undefined);
    }
  }
  if (hash && !hash.matches()) {
    await rm(partial, { force: true });
    throw new HubError(
      'corrupt',
      r.repo,
      r.file,
      `'${r.file}' from ${r.repo} does not match its hash ${r.etag}; the download was removed, run again`,
    );
  }
  report(true);
}
