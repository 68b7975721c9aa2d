/**
 * The Hugging Face Hub cache as `huggingface_hub` lays it out, so that Python and TypeScript share one
 * cache: `<cache>/models--<namespace>--<name>/{refs/<revision>, snapshots/<commit>/<file> → ../../blobs/<etag>,
 * blobs/<etag>, .no_exist/<commit>/<file>}`, with locks in `<cache>/.locks/models--…/<etag>.lock`.
 */
import { randomBytes } from 'node:crypto';
import { link, mkdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, normalize } from 'node:path';
import { HubError } from './errors';

/** A full commit hash: the only revision that names a snapshot directly. */
export const COMMIT_HASH = /^[0-9a-f]{40}$/;

type Env = Record<string, string | undefined>;

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? join(homedir(), p.slice(1)) : p;
}

/** `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface` (huggingface_hub's rule). */
export function hfHome(env: Env = process.env): string {
  return expandHome(env.HF_HOME ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface'));
}

/**
 * The Hub cache directory huggingface_hub and transformers use: `$HF_HUB_CACHE`, else
 * `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub` (see {@link hfHome}).
 *
 * @example
 * ```ts
 * import { hubCacheDir } from '@lora/tensor/hub';
 * console.log(hubCacheDir()); // /home/me/.cache/huggingface/hub
 * ```
 */
export function hubCacheDir(env: Env = process.env): string {
  return expandHome(env.HF_HUB_CACHE ?? env.HUGGINGFACE_HUB_CACHE ?? join(hfHome(env), 'hub'));
}

/** True when `HF_HUB_OFFLINE` (or transformers' `TRANSFORMERS_OFFLINE`) is 1, ON, YES or TRUE. */
export function hubOfflineFromEnv(env: Env = process.env): boolean {
  const v = env.HF_HUB_OFFLINE || env.TRANSFORMERS_OFFLINE;
  return v !== undefined && ['1', 'ON', 'YES', 'TRUE'].includes(v.toUpperCase());
}

/** The token huggingface_hub would send: `$HF_TOKEN`, else the token file (`$HF_TOKEN_PATH`, else `$HF_HOME/token`). */
export async function hubTokenFromEnv(env: Env = process.env): Promise<string | undefined> {
  const fromEnv = env.HF_TOKEN?.trim();
  if (fromEnv) return fromEnv;
  const file = expandHome(env.HF_TOKEN_PATH ?? join(hfHome(env), 'token'));
  const fromFile = (await readFile(file, 'utf8').catch(() => '')).trim();
  return fromFile || undefined;
}

/** `models--<namespace>--<name>`: one folder per repository, as huggingface_hub's `repo_folder_name`. */
export function repoFolderName(repo: string): string {
  return ['models', ...repo.split('/')].join('--');
}

/**
 * Checks a file name that came from a repository (and so is untrusted): relative, `/`-separated, and
 * staying inside the snapshot. Returns its parts.
 */
export function repoFileParts(repo: string, file: string): string[] {
  const parts = file.split('/');
  if (
    file.length === 0 ||
    isAbsolute(file) ||
    file.includes('\\') ||
    parts.some((p) => p === '' || p === '.' || p === '..') ||
    normalize(file) !== join(...parts)
  ) {
    throw new HubError(
      'invalid',
      repo,
      file,
      `file name '${file}' in repo '${repo}' is not a relative path inside the repository`,
    );
  }
  return parts;
}

/** The commit a revision points at in the cache: the revision itself when it is a commit hash, else `refs/<revision>`. */
export async function cachedCommit(storage: string, revision: string): Promise<string | undefined> {
  if (COMMIT_HASH.test(revision)) return revision;
  const ref = (await readFile(join(storage, 'refs', ...revision.split('/')), 'utf8').catch(() => '')).trim();
  return COMMIT_HASH.test(ref) ? ref : undefined;
}

/** Records that `revision` (a branch or tag) points at `commit`, atomically, as huggingface_hub does. */
export async function writeRef(storage: string, revision: string, commit: string): Promise<void> {
  if (revision === commit) return;
  const path = join(storage, 'refs', ...revision.split('/'));
  if ((await readFile(path, 'utf8').catch(() => '')) === commit) return;
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, commit);
  await rename(tmp, path);
}

/** Where a snapshot's file lives (a symlink into `blobs/` when huggingface_hub or we wrote it). */
export function pointerPath(storage: string, commit: string, parts: string[]): string {
  return join(storage, 'snapshots', commit, ...parts);
}

export async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null))?.isFile() ?? false;
}

/** True when the cache records that the file does not exist at this commit (`.no_exist/<commit>/<file>`). */
export function knownMissing(storage: string, commit: string, parts: string[]): Promise<boolean> {
  return isFile(join(storage, '.no_exist', commit, ...parts));
}

/** Records that the file does not exist at this commit, so that offline runs know it too (best effort). */
export async function markMissing(storage: string, commit: string, parts: string[]): Promise<void> {
  const path = join(storage, '.no_exist', commit, ...parts);
  await mkdir(dirname(path), { recursive: true }).catch(() => undefined);
  await writeFile(path, '', { flag: 'a' }).catch(() => undefined);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Runs `fn` holding `lockPath`, so that two processes (or two calls) never append to the same partial
 * download. The lock file holds the owner's pid and is made atomically by a hard link; a lock whose
 * process has died is taken over.
 */
export async function withLock<T>(lockPath: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
  await mkdir(dirname(lockPath), { recursive: true });
  const mine = `${lockPath}.${process.pid}.${randomBytes(4).toString('hex')}`;
  await writeFile(mine, String(process.pid));
  try {
    for (;;) {
      try {
        await link(mine, lockPath);
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const owner = Number((await readFile(lockPath, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(owner) && owner > 0 && !alive(owner)) {
        await unlink(lockPath).catch(() => undefined);
        continue;
      }
      if (signal?.aborted) throw signal.reason;
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await unlink(mine).catch(() => undefined);
  }
  try {
    return await fn();
  } finally {
    await unlink(lockPath).catch(() => undefined);
  }
}
