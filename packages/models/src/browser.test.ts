import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';
import { describe, expect, it } from 'vitest';

const CHROMIUM = process.env.LORA_CHROMIUM ?? '/usr/bin/chromium';
const here = import.meta.dirname;
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) console.warn(`[browser test] skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set LORA_CHROMIUM)`);

describe.skipIf(!haveChromium)('in a browser bundle (headless Chromium)', () => {
  it('loads a checkpoint from in-memory files, matches transformers, trains and tokenizes, on cpu and webgpu', async () => {
    const out = mkdtempSync(join(tmpdir(), 'lora-browser-'));
    const esbuild = join(here, '..', '..', '..', 'node_modules', '.bin', 'esbuild');
    const built = spawnSync(esbuild, [join(here, '..', 'browser', 'smoke.ts'), '--bundle', '--format=esm', '--platform=browser', `--outfile=${join(out, 'smoke.js')}`,
      '--conditions=@lora/source', '--log-level=error', '--define:process.env.NODE_ENV="production"'], { encoding: 'utf8' });
    expect(built.status, built.stderr).toBe(0);
    const fixtures = join(here, '..', '__fixtures__');
    const types: Record<string, string> = { '.js': 'text/javascript', '.json': 'application/json', '.html': 'text/html' };
    const server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x').pathname;
      const file = url === '/' ? null : url.startsWith('/fixtures/') ? join(fixtures, normalize(url.slice('/fixtures/'.length))) : join(out, normalize(url));
      if (url === '/') {
        res.writeHead(200, { 'content-type': 'text/html' });
        res.end('<!doctype html><script type="module" src="/smoke.js"></script>');
        return;
      }
      if (!file || !existsSync(file)) {
        res.writeHead(404);
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' });
      res.end(readFileSync(file));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic', '--disable-dev-shm-usage', '--enable-unsafe-webgpu'],
    });
    try {
      const page = await browser.newPage();
      const logs: string[] = [];
      page.on('console', (m) => logs.push(m.text()));
      page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
      await page.goto(`http://127.0.0.1:${port}/`);
      await page.waitForFunction(() => (window as unknown as { __lora?: { done: boolean } }).__lora?.done === true, undefined, { timeout: 240_000 });
      const result = await page.evaluate(() => (window as unknown as { __lora: unknown }).__lora) as {
        results: { backend: string; adapter: string; logitsRelErr: number; generated: number[]; expectedGenerated: number[]; lossFirst: number; lossLast: number; tokens: number[]; expectedTokens: number[]; leaked: number }[];
        errors: string[];
      };
      console.log(JSON.stringify(result.results.map((r) => ({ backend: r.backend, adapter: r.adapter, logitsRelErr: r.logitsRelErr }))));
      const cpu = result.results.find((r) => r.backend === 'cpu');
      expect(cpu, `${result.errors.join('; ')} ${logs.join('\n')}`).toBeDefined();
      for (const r of result.results) {
        expect(r.logitsRelErr, r.backend).toBeLessThan(1e-4);
        expect(r.generated, r.backend).toEqual(r.expectedGenerated);
        expect(r.lossLast, r.backend).toBeLessThan(r.lossFirst);
        expect(r.tokens, r.backend).toEqual(r.expectedTokens);
        expect(r.leaked, r.backend).toBe(0);
      }
      // webgpu needs an adapter (SwiftShader with --enable-unsafe-webgpu); it is reported, not required.
      if (!result.results.some((r) => r.backend === 'webgpu')) console.warn(`[browser test] webgpu did not run: ${result.errors.join('; ')}`);
    } finally {
      await browser.close();
      server.close();
    }
  }, 300_000);
});
