// @ts-check
// End to end: builds the page with Vite, serves the build (vite preview), opens it in headless
// Chromium (WebGPU on SwiftShader, --enable-unsafe-webgpu), fine-tunes a few steps, and checks the
// loss curve, the generations, the downloaded PEFT adapter and that the page threw nothing; saves a
// screenshot (into docs/ with UPDATE_SCREENSHOT=1, the one the README shows).
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { unzipSync } from 'fflate';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensorsHeader } from '@lora/tensor';
import { chromiumArgs, chromiumPath, requireChromium } from '@lora/tensor/testing';

const root = join(import.meta.dirname, '..');
const backend = process.env.LORA_PAGE_BACKEND ?? 'webgpu';
const steps = Number(process.env.LORA_PAGE_STEPS ?? 3);
// on CI a missing Chromium is a failure (.ci/run installs it), elsewhere the suite is skipped with a message
const withChromium = requireChromium();

let out = '';
/** @type {import('vite').PreviewServer | undefined} */
let server;
beforeAll(async () => {
  if (!withChromium) return;
  out = await mkdtemp(join(tmpdir(), 'lora-page-'));
  const { build, preview } = await import('vite');
  const config = { root, configFile: join(root, 'vite.config.js'), logLevel: /** @type {const} */ ('warn') };
  await build({ ...config, build: { outDir: join(out, 'dist'), emptyOutDir: true } });
  server = await preview({ ...config, build: { outDir: join(out, 'dist') }, preview: { port: 0, host: '127.0.0.1' } });
}, 240_000);
afterAll(async () => {
  await server?.close();
  if (out) await rm(out, { recursive: true, force: true });
});

describe.skipIf(!withChromium)('the page in headless Chromium', () => {
  it(`fine-tunes on ${backend}, draws the loss, samples before and after, and downloads a PEFT adapter`, async () => {
    const url = server?.resolvedUrls?.local[0];
    expect(url, 'vite preview did not start').toBeDefined();
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({ executablePath: chromiumPath(), args: chromiumArgs() });
    try {
      const page = await browser.newPage({ viewport: { width: 1000, height: 760 }, acceptDownloads: true });
      /** @type {string[]} */
      const errors = [];
      /** @type {string[]} */
      const logs = [];
      page.on('pageerror', (e) => errors.push(e.message));
      page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
      await page.goto(`${url}?backend=${backend}&steps=${steps}&batch=4&tokens=6&autorun=1`);
      await page.waitForFunction(() => /** @type {any} */ (window).__lora?.done === true, undefined, {
        timeout: 1_500_000,
      });
      /** @type {import('./main.js').PageState} */
      const state = await page.evaluate(() => /** @type {any} */ (window).__lora);
      expect(state.errors, logs.join('\n')).toEqual([]);
      expect(errors, logs.join('\n')).toEqual([]);
      // WebGPU validation errors (an invalid pipeline or bind group) reach only the console, and would leave garbage
      expect(logs.filter((l) => /Invalid \w+|exceeds the maximum|GPUValidationError/.test(l))).toEqual([]);
      expect(state.backend).toBe(backend);
      // training ran every step (each batch's loss is noisy: different entries), and the held-out loss went down
      expect(state.losses).toHaveLength(steps);
      expect(state.losses.every(Number.isFinite)).toBe(true);
      expect(/** @type {number} */ (state.heldoutAfter)).toBeLessThan(/** @type {number} */ (state.heldoutBefore));
      // generations before and after, shown in the table
      expect(state.before).toHaveLength(3);
      expect(state.after).toHaveLength(3);
      for (const g of [...state.before, ...state.after]) expect(g.length).toBeGreaterThan(0);
      const cells = await page.locator('#generations tbody td').allTextContents();
      expect(cells).toHaveLength(9);
      expect(cells[2]?.trim()).toBe(/** @type {string} */ (state.after[0]).replace(/\s+/g, ' ').trim());
      await expect.poll(() => page.locator('#status').textContent()).toMatch(/^fine-tuned in/);

      // the download: a zip of PEFT's two files
      const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
      expect(download.suggestedFilename()).toBe('fortune-llama-lora-adapter.zip');
      const zipPath = join(out, 'adapter.zip');
      await download.saveAs(zipPath);
      const files = unzipSync(new Uint8Array(await readFile(zipPath)));
      expect(Object.keys(files).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
      const config = JSON.parse(new TextDecoder().decode(files['adapter_config.json']));
      expect(config).toMatchObject({
        peft_type: 'LORA',
        r: 8,
        lora_alpha: 16,
        task_type: 'CAUSAL_LM',
        use_dora: false,
      });
      expect([...config.target_modules].sort()).toEqual([
        'down_proj',
        'gate_proj',
        'k_proj',
        'o_proj',
        'q_proj',
        'up_proj',
        'v_proj',
      ]);
      const header = readSafetensorsHeader(/** @type {Uint8Array} */ (files['adapter_model.safetensors']));
      const shapes = Object.fromEntries(header.entries.map((e) => [e.name, e.shape]));
      // 6 layers × 7 projections × (A, B), PEFT's key names, fortune-llama's shapes (hidden 192, kv 64, mlp 384)
      expect(Object.keys(shapes)).toHaveLength(6 * 7 * 2);
      expect(shapes['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight']).toEqual([8, 192]);
      expect(shapes['base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight']).toEqual([64, 8]);
      expect(shapes['base_model.model.model.layers.5.mlp.down_proj.lora_A.weight']).toEqual([8, 384]);
      expect(shapes['base_model.model.model.layers.5.mlp.up_proj.lora_B.weight']).toEqual([384, 8]);
      for (const e of header.entries) expect(e.dtype, e.name).toBe('F32');

      const shot = await page.screenshot({ fullPage: true });
      const shotPath =
        process.env.UPDATE_SCREENSHOT === '1' ? join(root, 'docs', 'screenshot.png') : join(out, 'screenshot.png');
      await mkdir(dirname(shotPath), { recursive: true });
      await writeFile(shotPath, shot);
      console.log(
        `[page] ${state.backend} (${state.adapter}): loss ${state.losses.map((l) => l.toFixed(3)).join(' ')}; held-out ${state.heldoutBefore?.toFixed(3)} -> ${state.heldoutAfter?.toFixed(3)}; screenshot ${shotPath}`,
      );
    } finally {
      await browser.close();
    }
  }, 1_800_000);
});
