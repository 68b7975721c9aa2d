/**
 * `npm run bench:load -w @lora/models`: load time and peak memory of a SmolLM-135M-shaped Llama saved
 * in bfloat16 (generated here, ~270 MB), as float32 weights: `fromPretrained` (a tensor at a time) on
 * the cpu and wasm backends, the earlier whole-file path (read the file, decode every tensor, then
 * load the state dict) for comparison, and transformers' `from_pretrained(dtype=float32)` and
 * `(dtype=bfloat16)` as the peer in the same run (PYTHON, or the repository's .venv-oracle).
 * Each load runs in a fresh process; peak RSS is the process's maximum resident set (getrusage),
 * less what it held after imports, before loading. `weightStorage: 'checkpoint'` (16-bit storage) adds
 * rows with the bytes the backend holds after loading (`tf.memory().numBytes`), and a second table
 * times a forward pass ([1, FORWARD_TOKENS] tokens, process CPU time, after one warm-up) on wasm with
 * float32 and with 16-bit weights, beside transformers' forward in float32 and bfloat16.
 */
import { spawnSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs-core';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type BackendName, Generator, encodeValues, initBackend, parseSafetensors } from '@lora/tensor';
import { isStoredWeightLayer, withoutInit } from '@lora/nn';
import { LlamaForCausalLM, parseLlamaConfig } from '../src/index';
import { SMOLLM_135M } from './cases';

/** SmolLM-135M's shape, as its bf16 checkpoint's config.json says it. */
const CONFIG = { ...SMOLLM_135M, architectures: ['LlamaForCausalLM'], torch_dtype: 'bfloat16' };

const MiB = 2 ** 20;
const FORWARD_TOKENS = 32;
const FORWARD_REPEATS = 2;

/** Writes config.json and a BF16 model.safetensors a tensor at a time (never the whole file in memory). */
async function generate(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify(CONFIG, null, 2));
  const model = withoutInit(() => new LlamaForCausalLM(parseLlamaConfig(CONFIG), { init: false }));
  const shapes = Object.entries(model.stateDict()).map(([name, t]) => [name, t.shape] as const);
  model.dispose();
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const [name, shape] of shapes) {
    const bytes = shape.reduce((a, b) => a * b, 1) * 2;
    header[name] = { dtype: 'BF16', shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const file = await open(join(dir, 'model.safetensors.tmp'), 'w');
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(json.length), true);
  await file.write(prefix);
  await file.write(new TextEncoder().encode(json));
  const g = new Generator(0);
  for (const [, shape] of shapes) {
    const t = g.randn(shape, 0, 0.02);
    await file.write(encodeValues(t.dataSync() as Float32Array, 'BF16'));
    t.dispose();
  }
  await file.close();
  const { rename } = await import('node:fs/promises');
  await rename(join(dir, 'model.safetensors.tmp'), join(dir, 'model.safetensors'));
}

/** In a child: load once, print {baseMiB, peakMiB, ms}. */
async function measure(mode: string, backend: BackendName, dir: string): Promise<void> {
  await initBackend(backend);
  const maxRss = () => process.resourceUsage().maxRSS / 1024; // KiB → MiB
  const base = process.memoryUsage().rss / MiB;
  const t0 = performance.now();
  let model: LlamaForCausalLM;
  if (mode === 'stream') model = await LlamaForCausalLM.fromPretrained(dir);
  else if (mode === 'checkpoint' || mode === 'forward-checkpoint' || mode === 'forward-float32')
    model = await LlamaForCausalLM.fromPretrained(dir, {
      weightStorage: mode === 'forward-float32' ? 'float32' : 'checkpoint',
    });
  else {
    // the earlier path: the whole file in memory, every tensor decoded, then the state dict loaded
    const config = parseLlamaConfig(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')));
    const bytes = await readFile(join(dir, 'model.safetensors'));
    const { tensors } = parseSafetensors(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    model = withoutInit(() => new LlamaForCausalLM(config, { init: false }));
    model.loadStateDict(tensors);
    for (const t of Object.values(tensors)) t.dispose();
  }
  const ms = performance.now() - t0;
  const heldMiB = tf.memory().numBytes / MiB;
  if (mode.startsWith('forward-')) {
    model.eval();
    const ids = tf.tensor2d([Array.from({ length: FORWARD_TOKENS }, (_, i) => (i * 7919) % 49152)], undefined, 'int32');
    const step = async () => {
      const { logits } = model.forward(ids as tf.Tensor2D);
      await logits.data();
      logits.dispose();
    };
    await step(); // warm-up
    const times: number[] = [];
    for (let i = 0; i < FORWARD_REPEATS; i++) {
      const c0 = process.cpuUsage();
      await step();
      const c = process.cpuUsage(c0);
      times.push((c.user + c.system) / 1000);
    }
    ids.dispose();
    console.log(JSON.stringify({ cpuMs: Math.min(...times), heldMiB }));
    model.dispose();
    return;
  }
  // values, not words: a 16-bit layer's parameter holds two codes a word
  let params = 0;
  const counted = new Set<object>();
  for (const [, m] of model.namedModules())
    for (const [name, p] of m.namedParameters('', false)) {
      if (counted.has(p)) continue; // a tied head's weight is the embedding's
      counted.add(p);
      params += isStoredWeightLayer(m) && name === 'weight' ? m.weightShape.reduce((a, b) => a * b, 1) : p.size;
    }
  // the wasm backend's heap only grows: its size is what the weights cost there
  const heap = (tf.backend() as unknown as { wasm?: { HEAPU8: Uint8Array } }).wasm?.HEAPU8.length;
  console.log(
    JSON.stringify({
      baseMiB: base,
      peakMiB: maxRss(),
      ms,
      params,
      heldMiB,
      ...(heap ? { wasmHeapMiB: heap / MiB } : {}),
    }),
  );
  model.dispose();
}

if (process.argv[2] === 'measure') {
  await measure(process.argv[3] as string, process.argv[4] as BackendName, process.argv[5] as string);
} else {
  const dir = join(import.meta.dirname, '..', '.bench', 'smollm-135m-bf16');
  if (!existsSync(join(dir, 'model.safetensors'))) {
    console.error(`generating a bf16 SmolLM-135M-shaped checkpoint in ${dir}…`);
    await initBackend('cpu');
    await generate(dir);
  }
  const fileMiB = (await stat(join(dir, 'model.safetensors'))).size / MiB;
  const rows: string[] = [];
  const run = (label: string, cmd: string, args: string[]) => {
    console.error(`measuring ${label}…`);
    const res = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * MiB });
    const last = res.stdout?.trim().split('\n').at(-1);
    if (res.status !== 0 || !last?.startsWith('{')) {
      console.error(`${label} failed: ${res.error?.message ?? res.stderr.trim().split('\n').slice(-3).join(' ')}`);
      return;
    }
    const r = JSON.parse(last) as {
      baseMiB: number;
      peakMiB: number;
      ms: number;
      params: number;
      wasmHeapMiB?: number;
      heldMiB?: number;
      cpuMs?: number;
    };
    if (r.cpuMs !== undefined) {
      forwardRows.push(`| ${label} | ${r.cpuMs.toFixed(0)} | ${r.heldMiB === undefined ? '' : r.heldMiB.toFixed(0)} |`);
      return;
    }
    if (r.wasmHeapMiB) console.error(`  wasm heap after loading: ${r.wasmHeapMiB.toFixed(0)} MiB`);
    const over = r.peakMiB - r.baseMiB;
    rows.push(
      `| ${label} | ${(r.ms / 1000).toFixed(2)} | ${over.toFixed(0)} | ${(over / fileMiB).toFixed(2)} | ${(over / ((r.params * 4) / MiB)).toFixed(2)} | ${r.heldMiB === undefined ? '' : r.heldMiB.toFixed(0)} |`,
    );
  };
  const forwardRows: string[] = [];
  for (const backend of ['cpu', 'wasm']) {
    run(`@lora/models fromPretrained (a tensor at a time), ${backend}`, process.execPath, [
      process.argv[1] as string,
      'measure',
      'stream',
      backend,
      dir,
    ]);
    run(`whole file, then loadStateDict (the earlier path), ${backend}`, process.execPath, [
      process.argv[1] as string,
      'measure',
      'whole',
      backend,
      dir,
    ]);
    run(`@lora/models fromPretrained weightStorage: 'checkpoint' (16-bit), ${backend}`, process.execPath, [
      process.argv[1] as string,
      'measure',
      'checkpoint',
      backend,
      dir,
    ]);
  }
  for (const storage of ['float32', 'checkpoint'])
    run(`@lora/models forward, wasm, weightStorage: '${storage}'`, process.execPath, [
      process.argv[1] as string,
      'measure',
      `forward-${storage}`,
      'wasm',
      dir,
    ]);
  const venv = join(import.meta.dirname, '..', '..', '..', '.venv-oracle', 'bin', 'python');
  const python = process.env.PYTHON ?? (existsSync(venv) ? venv : 'python3');
  for (const dtype of ['float32', 'bfloat16'])
    run(`transformers from_pretrained(dtype=${dtype}), PyTorch CPU`, python, [
      join(import.meta.dirname, '..', 'bench', 'load_peer.py'),
      dir,
      dtype,
    ]);
  for (const dtype of ['float32', 'bfloat16'])
    run(`transformers forward (dtype=${dtype}), PyTorch CPU`, python, [
      join(import.meta.dirname, '..', 'bench', 'load_peer.py'),
      dir,
      dtype,
      'forward',
      String(FORWARD_TOKENS),
      String(FORWARD_REPEATS),
    ]);
  const f32MiB = (fileMiB - 0.01) * 2;
  console.log(
    `\n${new Date().toISOString().slice(0, 10)}, Node ${process.version}; SmolLM-135M shape, bf16 file ${fileMiB.toFixed(0)} MiB, float32 weights ${f32MiB.toFixed(0)} MiB\n`,
  );
  console.log(
    '| loader | load s | peak RSS above baseline, MiB | × file size | × float32 weights | backend bytes held after load, MiB |',
  );
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const r of rows) console.log(r);
  console.log(
    `\nforward of [1, ${FORWARD_TOKENS}] tokens, logits read back; process CPU time, best of ${FORWARD_REPEATS} after a warm-up\n`,
  );
  console.log('| forward | CPU ms | backend bytes held, MiB |');
  console.log('| --- | --- | --- |');
  for (const r of forwardRows) console.log(r);
}
