#!/usr/bin/env node
// Fails when a package imports (in src/, bench/, browser/ or scripts/), or depends on, an @lora
// package that is not below it in the layer table of DESIGN.md (mirrored in LAYERS below), or one
// the design never allows (NEVER). Run by `npm test` and `npm run lint`.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const LAYERS = {
  '@lora/tensor': 0,
  '@lora/linalg': 1,
  '@lora/nn': 1,
  '@lora/kernels': 1,
  '@lora/models': 2,
  '@lora/core': 2,
  '@lora/loftq': 3,
  '@lora/eva': 3,
  '@lora/loraga': 3,
  '@lora/arrow': 3,
  '@lora/intruders': 3,
  '@lora/cli': 4,
};
// Sideways edges DESIGN.md allows within a layer: nn's layers, loss, optimizer and products run
// @lora/kernels' fused ops (one function per op; the kernels know nothing of modules).
const ALLOWED_SIDEWAYS = new Set(['@lora/nn->@lora/kernels']);
// What the design never allows, whatever the layers say: a model knows nothing of LoRA, and a method
// package works on @lora/core's layers, never on a model architecture.
const METHODS = ['@lora/loftq', '@lora/eva', '@lora/loraga', '@lora/arrow', '@lora/intruders'];
const NEVER = [
  ...METHODS.map((m) => [
    m,
    '@lora/models',
    'a method package never imports @lora/models: it works on any model through @lora/core (tests build small modules with @lora/nn)',
  ]),
  ['@lora/models', '@lora/core', '@lora/models never imports @lora/core: a model knows nothing of LoRA'],
];
// The folders of a package whose code ships or runs with it: sources (and tests), benchmarks, browser bundles, scripts.
const CODE_DIRS = ['src', 'bench', 'browser', 'scripts'];

const root = process.argv[2] ?? join(import.meta.dirname, '..');
const problems = [];

function* sourceFiles(dir) {
  for (const entry of readdirSync(dir)) {
    const p = join(dir, entry);
    if (entry === 'node_modules' || entry === 'dist' || entry.startsWith('.')) continue;
    if (statSync(p).isDirectory()) yield* sourceFiles(p);
    else if (/\.(c|m)?[jt]sx?$/.test(entry)) yield p;
  }
}

function check(from, to, where) {
  if (from === to) return;
  const never = NEVER.find(([a, b]) => a === from && b === to);
  if (never) {
    problems.push(`${where}: ${from} must not use ${to}; ${never[2]}`);
    return;
  }
  const a = LAYERS[from];
  const b = LAYERS[to];
  if (b === undefined)
    problems.push(`${where}: '${to}' is not in the layer table; add it to DESIGN.md and scripts/check-layers.mjs`);
  else if (b > a || (b === a && !ALLOWED_SIDEWAYS.has(`${from}->${to}`))) {
    problems.push(
      `${where}: ${from} (layer ${a}) must not use ${to} (layer ${b}); a package may use only lower layers`,
    );
  }
}

const pkgsDir = join(root, 'packages');
for (const dir of readdirSync(pkgsDir)) {
  const manifestPath = join(pkgsDir, dir, 'package.json');
  let manifest;
  try {
    manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
  } catch {
    continue;
  }
  const name = manifest.name;
  if (LAYERS[name] === undefined) {
    problems.push(
      `packages/${dir}: package '${name}' is not in the layer table; add it to DESIGN.md and scripts/check-layers.mjs`,
    );
    continue;
  }
  for (const field of ['dependencies', 'peerDependencies', 'devDependencies', 'optionalDependencies']) {
    for (const dep of Object.keys(manifest[field] ?? {})) {
      if (dep.startsWith('@lora/')) check(name, dep, `packages/${dir}/package.json ${field}`);
    }
  }
  const files = [];
  for (const codeDir of CODE_DIRS) {
    try {
      files.push(...sourceFiles(join(pkgsDir, dir, codeDir)));
    } catch {
      // no such folder
    }
  }
  const importRe =
    /(?:import|export)\s[^'"]*?from\s*['"](@lora\/[^/'"]+)|import\(\s*['"](@lora\/[^/'"]+)|require\(\s*['"](@lora\/[^/'"]+)/g;
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(importRe)) {
      const target = m[1] ?? m[2] ?? m[3];
      check(name, target, relative(root, file));
    }
  }
}

if (problems.length) {
  console.error(`check-layers: ${problems.length} problem(s)\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  process.exit(1);
}
console.log('check-layers: every package uses only packages below it');
