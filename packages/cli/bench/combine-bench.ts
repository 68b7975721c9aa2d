/**
 * The combine bench (bench/combine-7b.ts here, bench/combine-7b-gpu.ts on the GPU machine):
 * `lora combine --type ties_svd --density 0.5` on two synthetic
 * adapters of a 7B Llama's shapes (32 layers × q_proj, v_proj at 4096×4096, r 16), against PEFT 0.21's
 * add_weighted_adapter on the same files (bench/peer_combine.py, torch CPU, all threads).
 *
 * LORA_BACKEND picks our backend (as `lora combine` does); BENCH_LAYERS (default 32) sizes the adapters;
 * PEER_LAYERS (default 4) how many of their layers the peer combines: its full SVDs take about ten seconds
 * each on two cores, so by default it runs 8 modules and the table gives its time per module beside ours.
 * Also compares our B·A with PEFT's on the peer's modules. PYTHON names the interpreter.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { loraConfig, loraConfigToJson } from '@lora/core';
import { Generator, getBackendInfo, parseSafetensors, serializeSafetensors } from '@lora/tensor';
import { waitForQuiet } from '../../linalg/bench/quiet';

const layers = Number(process.env.BENCH_LAYERS ?? 32);
const python = process.env.PYTHON ?? 'python3';
const hidden = 4096;
const r = 16;
const key = (i: number, m: string, f: 'A' | 'B') =>
  `base_model.model.model.layers.${i}.self_attn.${m}.lora_${f}.weight`;

/** Two adapters with random factors of trained-looking size (B is not zero). */
async function makeAdapters(dir: string) {
  for (const [name, seed] of [
    ['a', 1],
    ['b', 2],
  ] as const) {
    const out = join(dir, name);
    if (existsSync(join(out, 'adapter_model.safetensors'))) continue;
    mkdirSync(out, { recursive: true });
    const g = new Generator(seed);
    const tensors: Record<string, tf.Tensor> = {};
    for (let i = 0; i < layers; i++)
      for (const m of ['q_proj', 'v_proj']) {
        tensors[key(i, m, 'A')] = tf.mul(g.randn([r, hidden]), 1 / 64);
        tensors[key(i, m, 'B')] = tf.mul(g.randn([hidden, r]), 0.02);
      }
    writeFileSync(
      join(out, 'adapter_model.safetensors'),
      await serializeSafetensors(tensors, { metadata: { format: 'pt' } }),
    );
    writeFileSync(
      join(out, 'adapter_config.json'),
      loraConfigToJson(loraConfig({ r, loraAlpha: 32, targetModules: ['q_proj', 'v_proj'] })),
    );
    tf.dispose(Object.values(tensors));
  }
}

async function products(file: string, n: number): Promise<Float32Array[]> {
  const t = parseSafetensors(new Uint8Array(readFileSync(file))).tensors;
  const out: Float32Array[] = [];
  for (let i = 0; i < n; i++)
    for (const m of ['q_proj', 'v_proj']) {
      const p = tf.matMul(t[key(i, m, 'B')] as tf.Tensor2D, t[key(i, m, 'A')] as tf.Tensor2D);
      out.push((await p.data()) as Float32Array);
      p.dispose();
    }
  tf.dispose(Object.values(t));
  return out;
}

/** How the bench starts its backend, runs the combination (reading a/ and b/, writing ours/), and runs the peer. */
export interface CombineBenchOptions {
  dir: string;
  peerScript: string;
  init: () => Promise<unknown>;
  combine: (a: string, b: string, out: string) => Promise<void>;
  /** Layers the peer combines (default PEER_LAYERS, else 4). */
  peerLayers?: number;
  peerDevice?: 'cpu' | 'cuda';
}

/** The bench: prints a markdown table on stdout. */
export async function combineBench(o: CombineBenchOptions): Promise<void> {
  const { dir } = o;
  const peerLayers = Math.min(o.peerLayers ?? Number(process.env.PEER_LAYERS ?? 4), layers);
  mkdirSync(dir, { recursive: true });
  await o.init();
  await makeAdapters(dir);
  await waitForQuiet();
  const load = loadavg()[0] as number;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await o.combine(join(dir, 'a'), join(dir, 'b'), join(dir, 'ours'));
  const oursMs = performance.now() - t0;
  const cu = process.cpuUsage(c0);
  const oursCpu = (cu.user + cu.system) / 1000;
  const backend = getBackendInfo();

  await waitForQuiet();
  console.error(`PEFT on the first ${peerLayers} layers…`);
  const res = spawnSync(python, [o.peerScript, dir, String(peerLayers), o.peerDevice ?? 'cpu'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const peer =
    res.status === 0
      ? (JSON.parse(res.stdout.trim().split('\n').at(-1) as string) as {
          ms: number;
          cpu: number;
          sensitivity: number;
          modules: number;
          threads: number;
          torch: string;
          peft: string;
        })
      : null;
  let err = Number.NaN;
  if (peer) {
    const ours = await products(join(dir, 'ours', 'adapter_model.safetensors'), peerLayers);
    const theirs = await products(join(dir, `peer-L${peerLayers}`, 'mix', 'adapter_model.safetensors'), peerLayers);
    err = 0;
    ours.forEach((o, i) => {
      const w = theirs[i] as Float32Array;
      let num = 0;
      let den = 0;
      for (let j = 0; j < w.length; j++) {
        num = Math.max(num, Math.abs((o[j] as number) - (w[j] as number)));
        den = Math.max(den, Math.abs(w[j] as number));
      }
      err = Math.max(err, num / den);
    });
  }
  const modules = 2 * layers;
  console.log(
    `\n${new Date().toISOString().slice(0, 10)}, Node ${process.version}, ${cpus().length} CPUs, backend ${backend?.name} (${backend?.adapter})${peer ? `; PEFT ${peer.peft}, torch ${peer.torch} (${peer.threads} threads)` : ''}\n`,
  );
  const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  console.log('| | modules | wall time | CPU time | per module (wall) |');
  console.log('| --- | --- | --- | --- | --- |');
  console.log(
    `| \`lora combine --type ties_svd --density 0.5\` (@lora, ${backend?.name}) | ${modules} | ${s(oursMs)} | ${s(oursCpu)} | ${(oursMs / modules / 1000).toFixed(2)} s |`,
  );
  if (peer)
    console.log(
      `| PEFT add_weighted_adapter ties_svd, torch ${o.peerDevice ?? 'cpu'} | ${peer.modules} | ${s(peer.ms)} | ${s(peer.cpu)} | ${(peer.ms / peer.modules / 1000).toFixed(2)} s |`,
    );
  console.log(`\nload average when ours started: ${load.toFixed(1)}`);
  console.log(
    `max |B·A − PEFT's B·A| / max |PEFT's B·A| over the peer's ${2 * peerLayers} modules: ${err.toExponential(2)} (entries at the pruning cut differ by the rounding of B·A; see BENCHMARKS.md)`,
  );
  if (peer)
    console.log(
      `PEFT against itself with B·A rounded differently (float64, then float32), first module: ${peer.sensitivity.toExponential(2)}`,
    );
}
