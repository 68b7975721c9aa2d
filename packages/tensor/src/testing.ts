/**
 * Test helpers for packages built on `@lora/tensor` (needs vitest). Import from `@lora/tensor/testing`.
 * `runInChromium` also needs `esbuild`, `playwright-core` and a Chromium binary.
 */
import { beforeAll, describe } from 'vitest';
import { type BackendInfo, type BackendName, type InitBackendOptions, initBackend, listBackends } from './backend';

/** Options that make a backend start in a test run; webgpu falls back to Mesa's software OpenGL ES adapter. */
const SOFTWARE_WEBGPU: InitBackendOptions = {
  webgpu: { dawnOptions: ['backend=opengles'], featureLevel: 'compatibility', allowSoftware: true },
};

interface Candidate {
  name: BackendName;
  options: InitBackendOptions;
  skip?: string;
}

let planned: Promise<Candidate[]> | null = null;

async function isAvailable(name: BackendName, options: InitBackendOptions) {
  const row = (await listBackends(options)).find((b) => b.name === name);
  return row;
}

/**
 * The backends numeric suites run on here. `LORA_TEST_BACKENDS` (comma-separated) fixes the list,
 * and a backend it names that cannot start fails the run; otherwise every backend that starts is
 * used, with webgpu on a software adapter when no hardware one exists (unless `LORA_TEST_WEBGPU=0`).
 */
export function backendsUnderTest(): Promise<Candidate[]> {
  planned ??= (async () => {
    const env = process.env;
    const forced = env.LORA_TEST_BACKENDS?.split(',')
      .map((s) => s.trim())
      .filter(Boolean) as BackendName[] | undefined;
    const out: Candidate[] = [];
    for (const name of ['cpu', 'wasm', 'webgpu', 'tensorflow'] as const) {
      if (forced && !forced.includes(name)) continue;
      if (name === 'webgpu' && env.LORA_TEST_WEBGPU === '0' && !forced) {
        out.push({ name, options: {}, skip: 'LORA_TEST_WEBGPU=0' });
        continue;
      }
      let options: InitBackendOptions = {};
      let row = await isAvailable(name, options);
      if (name === 'webgpu' && !row?.available && env.LORA_DAWN_OPTIONS === undefined) {
        const soft = await isAvailable(name, SOFTWARE_WEBGPU);
        if (soft?.available) {
          row = soft;
          options = SOFTWARE_WEBGPU;
        }
      }
      if (row?.available) out.push({ name, options });
      else if (forced)
        throw new Error(`LORA_TEST_BACKENDS asks for '${name}', which cannot start: ${row?.reason}. ${row?.hint}`);
      else out.push({ name, options, skip: `${row?.reason}. ${row?.hint}` });
    }
    return out;
  })();
  return planned;
}

const reported = new Set<string>();

/**
 * Declares `fn`'s suite once per backend available here (see {@link backendsUnderTest}); the
 * backend is started before the suite runs. Unavailable backends are skipped, with the reason printed.
 * Await it at the top level of a test file.
 *
 * @example
 * ```ts
 * await describeEachBackend('matmul', (backend) => {
 *   it('multiplies', async () => { expect(await tf.matMul(a, b).data()).toEqual(...); });
 * });
 * ```
 */
export async function describeEachBackend(
  title: string,
  fn: (backend: { name: BackendName; info: () => BackendInfo }) => void,
): Promise<void> {
  for (const c of await backendsUnderTest()) {
    if (c.skip !== undefined) {
      if (!reported.has(c.name)) console.warn(`[describeEachBackend] skipping backend '${c.name}': ${c.skip}`);
      reported.add(c.name);
      describe.skip(`${title} [${c.name}]`, () =>
        fn({
          name: c.name,
          info: () => {
            throw new Error('skipped');
          },
        }));
      continue;
    }
    describe(`${title} [${c.name}]`, () => {
      let info: BackendInfo | null = null;
      beforeAll(async () => {
        info = await initBackend(c.name, c.options);
      });
      fn({
        name: c.name,
        info: () => {
          if (info === null) throw new Error(`backend '${c.name}' has not started yet`);
          return info;
        },
      });
    });
  }
}

export { maxRelativeError } from './parity';

export { chromiumArgs, chromiumPath, haveChromium, requireChromium, runInChromium } from './browser-testing';
export type { ChromiumRunOptions } from './browser-testing';
export { startFakeHub } from './fake-hub';
export type { FakeHub, FakeHubFaults, FakeHubRepo, FakeHubRequest } from './fake-hub';
