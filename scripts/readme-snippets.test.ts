/**
 * Every TypeScript snippet of every package README runs here, so that they cannot rot. The snippets
 * of one README run in one program, each in its own block (after a prelude that makes what the
 * prose assumes: a model, adapters on disk), in a fresh working directory holding small stand-ins
 * for the checkpoints they name (`SmolLM-135M/` is a tiny Llama with a real BPE tokenizer).
 */
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';

const root = join(import.meta.dirname, '..');
const harness = join(import.meta.dirname, 'readme-snippets', 'harness.ts');
// the programs live in the repository (gitignored .tmp/) so that they resolve the workspace packages
const programs = join(import.meta.dirname, '.tmp', 'readme-snippets');

/** What one snippet needs before it runs: `contains` ties it to its block, `prelude` declares what the prose assumes. */
interface Prelude {
  contains: string;
  prelude: string;
}

/** Per README: what its working directory needs first, and the preludes of the snippets that need one. */
const NEEDS: Record<string, { setup?: string; teardown?: string; preludes?: Prelude[] }> = {
  'packages/arrow/README.md': {
    setup:
      "await __h.tinyCheckpoint(); await __h.peftAdapter('experts/sql', 1); await __h.peftAdapter('experts/math', 2); await __h.peftAdapter('experts/chat', 3);",
  },
  'packages/tensor/README.md': { setup: 'const __stopHub = await __h.fakeHub();', teardown: 'await __stopHub();' },
  'packages/models/README.md': {
    setup: 'const __stopHub = await __h.fakeHub();',
    teardown: 'await __stopHub();',
    preludes: [
      {
        contains: 'model.gradientCheckpointingEnable();',
        prelude:
          "const model = await __models.LlamaForCausalLM.fromPretrained('HuggingFaceTB/SmolLM-135M'); const __tf = await import('@tensorflow/tfjs-core'); const batches = [__tf.tensor2d([[1, 5, 9, 12, 7, 3]], [1, 6], 'int32')];",
      },
    ],
  },
  'packages/nn/README.md': {
    preludes: [
      {
        contains: 'const ac = new AbortController();',
        prelude:
          "const model = new Linear(8, 3); const batches = [{ x: tf.randomNormal([16, 8]), y: tf.tensor1d(new Array(16).fill(1), 'int32') }]; const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-2 }); const loss = (b: { x: tf.Tensor; y: tf.Tensor }) => crossEntropy(model.call(b.x) as tf.Tensor, b.y) as tf.Scalar;",
      },
    ],
  },
  'packages/eva/README.md': { setup: 'await __h.tinyCheckpoint();' },
  'packages/loraga/README.md': { setup: 'await __h.tinyCheckpoint();' },
  'packages/core/README.md': {
    setup: "await __h.tinyCheckpoint(); await __h.peftAdapter('my-peft-adapter', 0);",
    preludes: [
      {
        contains: 'lora_alpha: 16 } as never',
        prelude: "const model = await __models.LlamaForCausalLM.fromPretrained('SmolLM-135M');",
      },
      {
        contains: 'addWeightedAdapter(peft',
        prelude: 'const { peft, sqlFiles, chatFiles } = await __h.modelWithTwoAdapters();',
      },
      { contains: 'getPeftModel(gpt2', prelude: 'const gpt2 = new __h.TinyGpt2();' },
      {
        contains: 'trainableTokenIndices: [32000, 32001]',
        prelude:
          "await __h.tinyCheckpoint('vocab-32k', 32002); const model = await __models.LlamaForCausalLM.fromPretrained('vocab-32k');",
      },
      {
        contains: "initLoraWeights: 'pissa'",
        prelude: "const model = await __models.LlamaForCausalLM.fromPretrained('SmolLM-135M');",
      },
    ],
  },
};

/** The ```ts blocks of a markdown file. */
function tsBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1] as string);
}

/**
 * One program from a README's blocks: their imports merged at the top (a name imported twice is
 * imported once), each block's body in its own scope after its prelude.
 */
function program(readme: string, blocks: string[]): string {
  const needs = NEEDS[readme] ?? {};
  const named = new Map<string, Set<string>>();
  const other = new Set<string>();
  const bodies: string[] = [];
  const preludes = needs.preludes ?? [];
  for (const [i, block] of blocks.entries()) {
    const body: string[] = [];
    for (const line of block.split('\n')) {
      const m = /^import\s+\{([^}]*)\}\s+from\s+'([^']+)';$/.exec(line.trim());
      if (m) {
        const names = named.get(m[2] as string) ?? new Set<string>();
        for (const n of (m[1] as string)
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean))
          names.add(n);
        named.set(m[2] as string, names);
      } else if (/^import\s/.test(line.trim())) other.add(line.trim());
      else body.push(line);
    }
    const p = preludes.find((x) => block.includes(x.contains));
    bodies.push(
      `// ${readme}, snippet ${i + 1}\n{\n${p?.prelude ?? ''}\n${body.join('\n')}\n}\nif (process.env.LORA_SNIPPET_TIMES) process.stderr.write(\`snippet ${i + 1}: \${Date.now() - __t0} ms\\n\`);`,
    );
  }
  // each prelude belongs to exactly one snippet: a README that changed under it fails here, by name
  for (const p of preludes) {
    const holders = blocks.filter((b) => b.includes(p.contains)).length;
    if (holders !== 1)
      throw new Error(
        `${readme}: ${holders} snippets contain "${p.contains}" (one should): update NEEDS in readme-snippets.test.ts`,
      );
  }
  // a type-only name (`type X`) stays a type import; the rest are values
  const imports = [...named].map(([mod, names]) => `import { ${[...names].join(', ')} } from '${mod}';`);
  return [
    ...other,
    ...imports,
    `import * as __h from '${harness}';`,
    "import * as __models from '@lora/models';",
    'const __t0 = Date.now();',
    'await __h.start();',
    needs.setup ?? '',
    'try {',
    ...bodies,
    `} finally {\n${needs.teardown ?? ''}\n}`,
    'export {};',
  ].join('\n');
}

const readmes = readdirSync(join(root, 'packages'))
  .map((p) => `packages/${p}/README.md`)
  .filter((p) => {
    try {
      return tsBlocks(readFileSync(join(root, p), 'utf8')).length > 0;
    } catch {
      return false;
    }
  });

const cwd = process.cwd();
afterAll(() => {
  process.chdir(cwd);
  rmSync(programs, { recursive: true, force: true });
});

describe('README snippets run', () => {
  it('finds the READMEs with TypeScript snippets', () => {
    expect(readmes).toEqual(expect.arrayContaining(['packages/core/README.md', 'packages/models/README.md']));
  });

  for (const readme of readmes) {
    it(`${readme}: every snippet runs`, async () => {
      const blocks = tsBlocks(readFileSync(join(root, readme), 'utf8'));
      mkdirSync(programs, { recursive: true });
      const file = join(programs, `${readme.split('/')[1]}.ts`);
      writeFileSync(file, program(readme, blocks));
      const work = mkdtempSync(join(tmpdir(), 'readme-'));
      vi.spyOn(console, 'log').mockImplementation(() => {});
      vi.spyOn(console, 'warn').mockImplementation(() => {});
      vi.spyOn(console, 'error').mockImplementation(() => {});
      process.chdir(work);
      try {
        await import(/* @vite-ignore */ file);
      } finally {
        process.chdir(cwd);
        vi.restoreAllMocks();
        rmSync(work, { recursive: true, force: true });
      }
    }, 120_000);
  }
});
