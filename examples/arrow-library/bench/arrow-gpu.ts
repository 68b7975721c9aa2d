/**
 * Routed-forward throughput of @lora/arrow against a single merged adapter and against PEFT's Arrow
 * (bench/peer_arrow.py) on the same Llama shape and batches, with 4, 16 and 64 experts, in one run:
 * with LORA_ARROW_PYTHON set, the peer runs first (`$LORA_ARROW_PYTHON bench/peer_arrow.py`, same
 * environment), then ours; LORA_ARROW_PEER=file reads a peer's JSON instead. Prints a markdown table
 * (and both sides' results as JSON on stderr's last line).
 *
 * On the GPU machine (webgpu through Dawn, PEFT on CUDA), after `pack examples/arrow-library/bench/arrow-gpu.ts`:
 *   source .device/setup.sh && LORA_ARROW_PYTHON=python3 $NODE .device/bundle/arrow-gpu.mjs
 * Here, on the CPU (`npm run bench -w @lora-examples/arrow-library`): wasm against PEFT on torch's CPU, one thread each.
 * Environment: LORA_BACKEND (default webgpu), LORA_ARROW_SMALL=1 (a smaller Llama), LORA_ARROW_EXPERTS
 * (default 4,16,64), LORA_ARROW_SHAPES (default 8x256,8x1), LORA_ARROW_ITERS, LORA_ARROW_PEER_SCRIPT,
 * LORA_ARROW_CLOCK=cpu (this process's CPU time: one-thread CPU runs on a shared machine).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { arrowConfig, getPeftModel, loraConfig } from '@lora/core';
import { LlamaForCausalLM, parseLlamaConfig } from '@lora/models';
import { withoutInit } from '@lora/nn';
import { initBackend } from '@lora/tensor';
import { addArrowRouter, arrowRouters } from '@lora/arrow';

const small = process.env.LORA_ARROW_SMALL === '1';
// keep in step with CONFIG in peer_arrow.py
const CONFIG = {
  model_type: 'llama',
  vocab_size: small ? 512 : 8192,
  hidden_size: small ? 128 : 1024,
  intermediate_size: small ? 352 : 2816,
  num_hidden_layers: small ? 2 : 8,
  num_attention_heads: small ? 4 : 16,
  num_key_value_heads: small ? 2 : 4,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: false,
};
const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
const R = 16;
const TOP_K = 3;
const EXPERTS = (process.env.LORA_ARROW_EXPERTS ?? '4,16,64').split(',').map(Number);
const SHAPES = (process.env.LORA_ARROW_SHAPES ?? (small ? '2x64,2x1' : '8x256,8x1'))
  .split(',')
  .map((s) => s.split('x').map(Number) as [number, number]);
const ITERS = Number(process.env.LORA_ARROW_ITERS ?? (small ? 5 : 20)); // as peer_arrow.py

/**
 * LORA_ARROW_CLOCK=cpu: this process's CPU time instead of the wall clock (as peer_arrow.py's
 * time.process_time), for single-threaded CPU runs on a shared machine, where the wall clock counts
 * other processes' time too.
 */
const CPU_CLOCK = process.env.LORA_ARROW_CLOCK === 'cpu';
const now = () => {
  if (!CPU_CLOCK) return performance.now();
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};

interface Row {
  experts: number;
  shape: string;
  mode: 'base' | 'arrow' | 'merged';
  tokens_per_s: number;
}

/** Tokens per second of `forward` (warm-up first; every call's output freed; the last one awaited). */
async function tokensPerS(forward: () => tf.Tensor, tokens: number): Promise<number> {
  for (let i = 0; i < 2; i++) {
    const y = forward();
    await y.data();
    y.dispose();
  }
  const t0 = now();
  let last: tf.Tensor | null = null;
  for (let i = 0; i < ITERS; i++) {
    last?.dispose();
    last = forward();
  }
  await (last as tf.Tensor).data();
  (last as tf.Tensor).dispose();
  return (tokens * ITERS) / ((now() - t0) / 1000);
}

type Peer = { device: string; torch: string; rows: (Row & { peak_bytes?: number | null })[] };

/** PEFT's figures: run now (LORA_ARROW_PYTHON) or read from a file (LORA_ARROW_PEER); null without either. */
function peerFigures(): Peer | null {
  const python = process.env.LORA_ARROW_PYTHON;
  if (python) {
    const script = process.env.LORA_ARROW_PEER_SCRIPT ?? 'examples/arrow-library/bench/peer_arrow.py';
    console.error(`PEFT: ${python} ${script}`);
    // PEFT on CUDA against our webgpu, on torch's CPU against our CPU backends
    const device =
      process.env.LORA_ARROW_DEVICE ?? ((process.env.LORA_BACKEND ?? 'webgpu') === 'webgpu' ? 'cuda' : 'cpu');
    const out = execFileSync(python, [script], {
      encoding: 'utf8',
      env: { ...process.env, LORA_ARROW_DEVICE: device },
      stdio: ['ignore', 'pipe', 'inherit'],
      maxBuffer: 1 << 26,
    });
    return JSON.parse(out) as Peer;
  }
  return process.env.LORA_ARROW_PEER ? (JSON.parse(readFileSync(process.env.LORA_ARROW_PEER, 'utf8')) as Peer) : null;
}

async function main() {
  const peerRows = peerFigures();
  const info = await initBackend((process.env.LORA_BACKEND as 'webgpu') ?? 'webgpu');
  console.error(`backend ${info.name} (${info.adapter})`);
  const model = withoutInit(() => new LlamaForCausalLM(parseLlamaConfig(CONFIG), { init: false }));
  // random weights on the device (norms 1): the values do not change the cost
  for (const [name, p] of model.namedParameters())
    tf.tidy(() =>
      p.assign(name.endsWith('norm.weight') ? tf.onesLike(p) : tf.randomNormal(p.shape, 0, 0.02, 'float32', 1)),
    );
  const ids = new Map(
    SHAPES.map(([b, t]) => [`${b}x${t}`, tf.randomUniformInt([b, t], 0, CONFIG.vocab_size, 2) as tf.Tensor2D]),
  );
  // the logits summed on the device: one scalar to read back
  const forward = (x: tf.Tensor2D) => () => tf.tidy(() => tf.sum(model.forward(x).logits));
  const rows: Row[] = [];
  for (const [b, t] of SHAPES) {
    const shape = `${b}x${t}`;
    rows.push({ experts: 0, shape, mode: 'base', tokens_per_s: await tokensPerS(forward(ids.get(shape)!), b * t) });
  }
  for (const e of EXPERTS) {
    const cfg = loraConfig({ r: R, loraAlpha: 2 * R, targetModules: TARGETS, initLoraWeights: false });
    const names = Array.from({ length: e }, (_, i) => `task_${i}`);
    // experts with random factors, drawn on the device (withoutInit: no JS draws for them)
    const peft = withoutInit(() => getPeftModel(model, cfg, { adapterName: 'task_0' }));
    for (const n of names.slice(1)) withoutInit(() => peft.addAdapter(n, cfg));
    for (const [, layer] of peft.loraLayers())
      for (const n of names)
        for (const f of [layer.factorA(n), layer.factorB(n)])
          tf.tidy(() => f.assign(tf.randomNormal(f.shape, 0, 0.05)));
    addArrowRouter(peft, arrowConfig({ topK: Math.min(TOP_K, e), rngSeed: 0, taskAdapterNames: names }));
    peft.eval();
    for (const [b, t] of SHAPES) {
      const shape = `${b}x${t}`;
      rows.push({ experts: e, shape, mode: 'arrow', tokens_per_s: await tokensPerS(forward(ids.get(shape)!), b * t) });
    }
    const built = [...arrowRouters(peft)].reduce((s, [, r]) => s + r.prototypeBuilds, 0);
    console.error(`${e} experts: ${built} prototypes built (${[...arrowRouters(peft)].length} layers)`);
    peft.setAdapter('task_0');
    peft.mergeAdapter();
    for (const [b, t] of SHAPES) {
      const shape = `${b}x${t}`;
      rows.push({ experts: e, shape, mode: 'merged', tokens_per_s: await tokensPerS(forward(ids.get(shape)!), b * t) });
    }
    peft.unmergeAdapter();
    peft.unload();
  }
  const peer = peerRows;
  const find = (list: Row[], e: number, shape: string, mode: Row['mode']) =>
    list.find((r) => r.experts === e && r.shape === shape && r.mode === mode)?.tokens_per_s;
  const fmt = (v: number | undefined) => (v === undefined ? '—' : v >= 1e4 ? `${(v / 1e3).toFixed(0)}k` : v.toFixed(0));
  const ratio = (a: number | undefined, b: number | undefined) => (a && b ? `${(a / b).toFixed(2)}` : '—');
  const lines = [
    `Routed forward, Llama ${CONFIG.hidden_size}×${CONFIG.num_hidden_layers} layers (r ${R} on 7 projections, top-${TOP_K}), float32; tokens/s${CPU_CLOCK ? ' of CPU time (one thread each)' : ''}, mean of ${ITERS} forwards`,
    `ours: @lora/arrow on ${info.name} (${info.adapter}); PEFT: ${peer ? `PEFT 0.21 on ${peer.device}, torch ${peer.torch}` : 'not given (LORA_ARROW_PEER)'}`,
    '',
    '| batch | experts | ours: Arrow | ours: 1 merged | ours Arrow/merged | PEFT: Arrow | PEFT: 1 merged | PEFT Arrow/merged | PEFT peak GiB |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const [b, t] of SHAPES) {
    const shape = `${b}x${t}`;
    lines.push(
      `| ${shape} | base | — | ${fmt(find(rows, 0, shape, 'base'))} | — | — | ${fmt(peer ? find(peer.rows, 0, shape, 'base') : undefined)} | — | — |`,
    );
    for (const e of EXPERTS) {
      const oa = find(rows, e, shape, 'arrow');
      const om = find(rows, e, shape, 'merged');
      const pa = peer ? find(peer.rows, e, shape, 'arrow') : undefined;
      const pm = peer ? find(peer.rows, e, shape, 'merged') : undefined;
      const peak = peer?.rows.find((r) => r.experts === e && r.shape === shape && r.mode === 'arrow')?.peak_bytes;
      lines.push(
        `| ${shape} | ${e} | ${fmt(oa)} | ${fmt(om)} | ${ratio(oa, om)} | ${fmt(pa)} | ${fmt(pm)} | ${ratio(pa, pm)} | ${peak ? (peak / 2 ** 30).toFixed(2) : '—'} |`,
      );
    }
  }
  console.log(lines.join('\n'));
  console.error(JSON.stringify({ backend: info, rows, peer }));
  for (const x of ids.values()) x.dispose();
  model.dispose();
}

await main();
