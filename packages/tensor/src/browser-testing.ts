/**
 * Runs a browser entry point in headless Chromium for a test: bundles it with esbuild (the
 * `@lora/source` condition, so packages are read from `src/`), serves it with the fixture folders it
 * fetches, and returns what the page leaves in `window.__lora` once `done` is true. Node only; needs
 * the optional `esbuild` and `playwright-core` packages and a Chromium binary.
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';

/** Where Chromium is looked for: `LORA_CHROMIUM`, else Debian's `/usr/bin/chromium`. */
export function chromiumPath(): string {
  return process.env.LORA_CHROMIUM ?? '/usr/bin/chromium';
}

/** Whether {@link runInChromium} can start a browser here (tests skip, with a message, when not). */
export function haveChromium(): boolean {
  return existsSync(chromiumPath());
}

/**
 * What a browser test does when Chromium is missing: on CI (`CI` set; `.ci/run` installs Chromium) it
 * throws, elsewhere it warns once that the suite is skipped and how to get Chromium. Returns whether
 * Chromium is there, for `describe.skipIf(!requireChromium())`.
 *
 * @example
 * ```ts
 * describe.skipIf(!requireChromium())('in a browser bundle', () => { ... });
 * ```
 */
export function requireChromium(): boolean {
  if (haveChromium()) return true;
  if (process.env.CI)
    throw new Error(`no Chromium at ${chromiumPath()} on CI; .ci/run installs it (apt-get install chromium)`);
  console.warn(
    `[browser test] skipped: no Chromium at ${chromiumPath()} (apt-get install chromium, or set LORA_CHROMIUM)`,
  );
  return false;
}

/**
 * The flags {@link runInChromium} launches Chromium with: headless in a container (as root, no GPU
 * sandbox, no network chatter) and WebGPU on SwiftShader (`--enable-unsafe-webgpu`). For a test that
 * drives its own page with playwright-core.
 *
 * @example
 * ```ts
 * const browser = await chromium.launch({ executablePath: chromiumPath(), args: chromiumArgs() });
 * ```
 */
export function chromiumArgs(): string[] {
  return [
    '--no-sandbox',
    '--disable-gpu-sandbox',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-quic',
    '--disable-dev-shm-usage',
    '--enable-unsafe-webgpu',
  ];
}

/** Options of {@link runInChromium}. */
export interface ChromiumRunOptions {
  /** The page's script (TypeScript), bundled for the browser. */
  entry: string;
  /** URL prefixes (e.g. `/fixtures/`) served from folders. */
  serve?: Record<string, string>;
  /** How long the page may take to set `window.__lora.done`. Default 240 s. */
  timeoutMs?: number;
}

const TYPES: Record<string, string> = { '.js': 'text/javascript', '.json': 'application/json', '.html': 'text/html' };

/**
 * Bundles `entry`, opens it in headless Chromium (WebGPU on SwiftShader with `--enable-unsafe-webgpu`)
 * and returns `window.__lora` when its `done` is true, with the page's console lines.
 *
 * @example
 * ```ts
 * const { result, logs } = await runInChromium<{ done: boolean; ok: boolean }>({ entry: 'browser/smoke.ts', serve: { '/fixtures/': '__fixtures__' } });
 * ```
 */
export async function runInChromium<T>(options: ChromiumRunOptions): Promise<{ result: T; logs: string[] }> {
  const out = mkdtempSync(join(tmpdir(), 'lora-browser-'));
  const esbuild = await import('esbuild');
  await esbuild.build({
    entryPoints: [options.entry],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    outfile: join(out, 'page.js'),
    conditions: ['@lora/source'],
    logLevel: 'error',
    define: { 'process.env.NODE_ENV': '"production"' },
  });
  const serve = Object.entries(options.serve ?? {});
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x').pathname;
    if (url === '/') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><script type="module" src="/page.js"></script>');
      return;
    }
    const mount = serve.find(([prefix]) => url.startsWith(prefix));
    const file = mount ? join(mount[1], normalize(url.slice(mount[0].length))) : join(out, normalize(url));
    if (!existsSync(file)) {
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: chromiumPath(),
    args: chromiumArgs(),
  });
  try {
    const page = await browser.newPage();
    const logs: string[] = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForFunction(
      () => (window as unknown as { __lora?: { done: boolean } }).__lora?.done === true,
      undefined,
      { timeout: options.timeoutMs ?? 240_000 },
    );
    const result = (await page.evaluate(() => (window as unknown as { __lora: unknown }).__lora)) as T;
    return { result, logs };
  } finally {
    await browser.close();
    server.close();
  }
}
