/**
 * A local HTTP server that answers as the Hugging Face Hub does for downloads, so that the download
 * path is tested without a network: the revision API (`/api/models/<repo>/revision/<rev>`), paths-info,
 * and `/<repo>/resolve/<rev>/<file>` with `ETag`, `X-Repo-Commit`, `X-Linked-Etag` / `X-Linked-Size`,
 * a redirect for LFS files to a CDN on another origin, and HTTP Range. Faults can be injected.
 */
import { createHash } from 'node:crypto';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/** One repository of a {@link startFakeHub} server: its files at one commit, and the branches / tags naming it. */
export interface FakeHubRepo {
  /** `namespace/name`. */
  id: string;
  /** File path → content. Files over `lfsThreshold` bytes (default 1 000), and every `.safetensors`, are LFS files. */
  files: Record<string, Uint8Array | string>;
  /** The commit hash (default: derived from the id). */
  commit?: string;
  /** Revisions that resolve to the commit besides it (default `['main']`). */
  refs?: string[];
  /** A token (`hf_…`) every request for this repo must carry; without it the repo answers 401. */
  token?: string;
}

/** One request the server saw. */
export interface FakeHubRequest {
  method: string;
  url: string;
  /** Which server answered: the Hub's origin or the CDN's. */
  origin: 'hub' | 'cdn';
  range: string | undefined;
  authorization: string | undefined;
}

/** Faults applied to file data responses (the resolve endpoint's body, or the CDN's). */
export interface FakeHubFaults {
  /** The next `times` data responses for `file` send `afterBytes` bytes of the body, then drop the connection. */
  drop?: { file: string; afterBytes: number; times: number };
  /** Data responses for `file` send `afterBytes` bytes, then stall (never finish) until the server closes. */
  stall?: { file: string; afterBytes: number };
  /** Range headers are ignored: every data response is the whole file with status 200. */
  ignoreRange?: boolean;
  /** Data responses for `file` flip one byte (the hash no longer matches). */
  corrupt?: { file: string };
}

/** A running fake Hub. */
export interface FakeHub {
  /** The Hub's address, for `hubUrl` / `HF_ENDPOINT`. */
  url: string;
  requests: FakeHubRequest[];
  faults: FakeHubFaults;
  /** The sha256 (LFS files) or git blob id (others) a file is stored under, as the Hub reports it. */
  etag(repo: string, file: string): string;
  close(): Promise<void>;
}

interface StoredFile {
  bytes: Uint8Array;
  gitOid: string;
  sha256: string;
  lfs: boolean;
}

function gitBlobId(bytes: Uint8Array): string {
  return createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex');
}

function listen(server: Server, host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve(`http://${host}:${(server.address() as AddressInfo).port}`));
  });
}

/**
 * Starts a fake Hub on 127.0.0.1 serving `repos`. Close it when done.
 *
 * @example
 * ```ts
 * const hub = await startFakeHub([{ id: 'me/tiny', files: { 'config.json': '{}' } }]);
 * const path = await hubFile('me/tiny', 'config.json', { hubUrl: hub.url, cacheDir: tmp });
 * await hub.close();
 * ```
 */
export async function startFakeHub(repos: FakeHubRepo[], options: { lfsThreshold?: number } = {}): Promise<FakeHub> {
  const threshold = options.lfsThreshold ?? 1000;
  const stored = new Map<string, { repo: FakeHubRepo; commit: string; files: Map<string, StoredFile> }>();
  const bySha = new Map<string, StoredFile & { name: string }>();
  for (const repo of repos) {
    const files = new Map<string, StoredFile>();
    for (const [name, content] of Object.entries(repo.files)) {
      const bytes = typeof content === 'string' ? new TextEncoder().encode(content) : content;
      const sha256 = createHash('sha256').update(bytes).digest('hex');
      const file = {
        bytes,
        gitOid: gitBlobId(bytes),
        sha256,
        lfs: bytes.length > threshold || name.endsWith('.safetensors'),
      };
      files.set(name, file);
      bySha.set(sha256, { ...file, name });
    }
    const commit = repo.commit ?? createHash('sha1').update(`commit of ${repo.id}`).digest('hex');
    stored.set(repo.id, { repo, commit, files });
  }
  const requests: FakeHubRequest[] = [];
  const faults: FakeHubFaults = {};
  const sockets = new Set<import('node:net').Socket>();
  let cdnUrl = '';

  const sendData = (
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    file: StoredFile,
    extra: Record<string, string>,
  ) => {
    let bytes = file.bytes;
    if (faults.corrupt?.file === name) {
      bytes = bytes.slice();
      bytes[bytes.length >> 1] = (bytes[bytes.length >> 1] as number) ^ 0xff;
    }
    const size = bytes.length;
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    let start = 0;
    let end = size - 1;
    let status = 200;
    // the client's zero-length probe (Range: bytes=0-0) is honoured even then: it is how the file's size is learnt
    if (m && (!faults.ignoreRange || req.headers.range === 'bytes=0-0')) {
      start = Number(m[1]);
      end = m[2] ? Math.min(Number(m[2]), size - 1) : size - 1;
      if (start >= size) {
        res.writeHead(416, { 'Content-Range': `bytes */${size}` }).end();
        return;
      }
      status = 206;
    }
    const body = bytes.subarray(start, end + 1);
    res.writeHead(status, {
      ...extra,
      'Accept-Ranges': 'bytes',
      'Content-Length': String(body.length),
      'Content-Type': 'application/octet-stream',
      ...(status === 206 ? { 'Content-Range': `bytes ${start}-${end}/${size}` } : {}),
    });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    // the client's zero-length probe (Range: bytes=0-0) is answered whole: faults hit real downloads only
    const probe = status === 206 && end === start;
    const drop = faults.drop;
    if (!probe && drop?.file === name && drop.times > 0 && body.length > drop.afterBytes) {
      drop.times--;
      res.write(body.subarray(0, drop.afterBytes), () => res.destroy());
      return;
    }
    if (!probe && faults.stall?.file === name && body.length > faults.stall.afterBytes) {
      res.write(body.subarray(0, faults.stall.afterBytes));
      return;
    }
    res.end(body);
  };

  const handle = (origin: 'hub' | 'cdn') => (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://x');
    requests.push({
      method: req.method ?? 'GET',
      url: url.pathname,
      origin,
      range: req.headers.range,
      authorization: req.headers.authorization,
    });
    const notFound = (code: string, commit?: string) =>
      res
        .writeHead(404, {
          'Content-Type': 'application/json',
          'X-Error-Code': code,
          ...(commit ? { 'X-Repo-Commit': commit } : {}),
        })
        .end(JSON.stringify({ error: `${code}: ${url.pathname}` }));
    if (origin === 'cdn') {
      const file = bySha.get(url.pathname.replace(/^\/blobs\//, ''));
      if (!file) return notFound('EntryNotFound');
      return sendData(req, res, file.name, file, { ETag: `"${file.sha256}"` });
    }
    const path = decodeURIComponent(url.pathname);
    const api = /^\/api\/models\/([^/]+\/[^/]+|[^/]+)\/(revision|paths-info)\/([^/]+)$/.exec(path);
    const resolve = api ? null : /^\/([^/]+\/[^/]+|[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    const repoId = api?.[1] ?? resolve?.[1];
    const entry = repoId === undefined ? undefined : stored.get(repoId);
    if (!entry) return notFound('RepoNotFound');
    if (entry.repo.token && req.headers.authorization !== `Bearer ${entry.repo.token}`) {
      return res
        .writeHead(401, { 'Content-Type': 'application/json', 'X-Error-Code': 'RepoNotFound' })
        .end(JSON.stringify({ error: 'Invalid credentials in Authorization header' }));
    }
    const revision = (api?.[3] ?? resolve?.[2]) as string;
    if (revision !== entry.commit && !(entry.repo.refs ?? ['main']).includes(revision))
      return notFound('RevisionNotFound');
    if (api?.[2] === 'revision') {
      return res.writeHead(200, { 'Content-Type': 'application/json' }).end(
        JSON.stringify({
          _id: `id-${entry.repo.id}`,
          id: entry.repo.id,
          sha: entry.commit,
          private: !!entry.repo.token,
          gated: false,
          downloads: 0,
          likes: 0,
          lastModified: '2026-01-01T00:00:00.000Z',
          siblings: [...entry.files.keys()].map((rfilename) => ({ rfilename })),
        }),
      );
    }
    if (api?.[2] === 'paths-info') {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        const { paths } = JSON.parse(body || '{}') as { paths?: string[] };
        const infos = (paths ?? []).flatMap((p) => {
          const f = entry.files.get(p);
          if (!f) return [];
          return [
            {
              type: 'file',
              path: p,
              oid: f.gitOid,
              size: f.bytes.length,
              ...(f.lfs ? { lfs: { oid: f.sha256, size: f.bytes.length, pointerSize: 134 } } : {}),
            },
          ];
        });
        res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(infos));
      });
      return;
    }
    const name = resolve?.[3] as string;
    const file = entry.files.get(name);
    if (!file) return notFound('EntryNotFound', entry.commit);
    const common = { 'X-Repo-Commit': entry.commit };
    if (file.lfs) {
      // as the Hub: LFS files redirect to the CDN, the headers carrying what the CDN's do not say
      return res
        .writeHead(302, {
          ...common,
          Location: `${cdnUrl}/blobs/${file.sha256}`,
          ETag: `"${file.gitOid}"`,
          'X-Linked-Etag': `"${file.sha256}"`,
          'X-Linked-Size': String(file.bytes.length),
          'Content-Length': '0',
        })
        .end();
    }
    return sendData(req, res, name, file, { ...common, ETag: `"${file.gitOid}"` });
  };

  const hubServer = createServer(handle('hub'));
  const cdnServer = createServer(handle('cdn'));
  for (const s of [hubServer, cdnServer])
    s.on('connection', (socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
    });
  const url = await listen(hubServer, '127.0.0.1');
  // the CDN on another origin, as the Hub's is (all of 127/8 is loopback on Linux; elsewhere the same address)
  cdnUrl = await listen(cdnServer, '127.0.0.2').catch(() => listen(cdnServer, '127.0.0.1'));
  return {
    url,
    requests,
    faults,
    etag: (repo, file) => {
      const f = stored.get(repo)?.files.get(file);
      if (!f) throw new Error(`fake hub: no ${repo}/${file}`);
      return f.lfs ? f.sha256 : f.gitOid;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await Promise.all([hubServer, cdnServer].map((s) => new Promise((r) => s.close(() => r(undefined)))));
    },
  };
}
