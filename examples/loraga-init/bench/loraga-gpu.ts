/**
 * LoRA-GA on the 123M Llama (hidden 1024, 8 layers, 16 / 4 heads, vocabulary 32 000, tied; every
 * projection targeted, r 8, α 16, ArB2r + stable): `preprocessLoraga` over 8 batches of 4 × 512 tokens,
 * then `getPeftModel` + `initialized()` (56 randomized SVDs and base-weight updates), with and without
 * `offload` (and offloaded with one decoder layer's 7 targets a pass), each in a fresh process (the webgpu buffer pool never shrinks, so its size at the end is
 * the run's peak); then PEFT 0.21 on CUDA (bench/peer_loraga.py) on the same model and batch shapes.
 * Prints a table and one JSON line.
 *
 * GPU machine:  ../shared/device/pack examples/loraga-init/bench/loraga-gpu.ts   (here, after npm run build)
 *               source .device/setup.sh && $NODE .device/bundle/loraga-gpu.mjs      (there)
 * Here, small:  node <bundle> --model tiny --backend cpu --python .venv-oracle/bin/python --device cpu
 */
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel, loraConfig } from '@lora/core';
import { preprocessLoraga } from '@lora/loraga';
import { LlamaForCausalLM, parseLlamaConfig } from '@lora/models';
import { manualSeed, withoutInit } from '@lora/nn';
import { initBackend } from '@lora/tensor';

export const MODELS: Record<string, { config: Record<string, unknown>; batch: number; seq: number; batches: number }> =
  {
    '123m': {
      config: {
        model_type: 'llama',
        vocab_size: 32000,
        hidden_size: 1024,
        intermediate_size: 2816,
        num_hidden_layers: 8,
        num_attention_heads: 16,
        num_key_value_heads: 4,
        max_position_embeddings: 2048,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
      },
      batch: 4,
      seq: 512,
      batches: 8,
    },
    tiny: {
      config: {
        model_type: 'llama',
        vocab_size: 96,
        hidden_size: 64,
        intermediate_size: 112,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
      },
      batch: 2,
      seq: 24,
      batches: 3,
    },
  };
const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    model: { type: 'string', default: '123m' },
    backend: { type: 'string', default: 'webgpu' },
    python: { type: 'string', default: 'python3' },
    device: { type: 'string', default: 'cuda' },
    peer: { type: 'string', default: 'examples/loraga-init/bench/peer_loraga.py' },
    'per-pass': { type: 'string' },
    /** Seconds each of the four runs may take before it is stopped (its row is then missing). */
    'child-timeout': { type: 'string', default: '120' },
  },
});

const MiB = 2 ** 20;

/** One configuration in this process: prints a JSON line. */
async function child(offload: boolean, targetsPerPass?: number): Promise<void> {
  const spec = MODELS[values.model] as (typeof MODELS)[string];
  const info = await initBackend(values.backend as 'webgpu', {
    importers: {
      '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
      '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
    },
  });
  const config = parseLlamaConfig(spec.config);
  // transformers' init (normal 0.02, norms 1) drawn on the backend: a 123M-parameter draw in JS takes a minute
  const model = withoutInit(() => new LlamaForCausalLM(config, { init: false }));
  let seed = 1; // tfjs draws from Math.random for a seed of 0
  for (const [name, p] of model.namedParameters())
    tf.tidy(() =>
      p.assign(name.endsWith('norm.weight') ? tf.onesLike(p) : tf.randomNormal(p.shape, 0, 0.02, 'float32', seed++)),
    );
  const vocab = config.vocabSize;
  const batches = Array.from({ length: spec.batches }, (_, i) =>
    tf.tidy(
      () =>
        tf.cast(
          tf.floor(tf.randomUniform([spec.batch, spec.seq], 0, vocab, 'float32', 1000 + i)),
          'int32',
        ) as tf.Tensor2D,
    ),
  );
  const lora = loraConfig({
    r: 8,
    loraAlpha: 16,
    targetModules: TARGETS,
    initLoraWeights: 'lora_ga',
    loraGaConfig: {},
  });
  // each distinct parameter once (a tied lm_head is the embedding), as torch's model.parameters()
  const weightBytes = [...new Set(model.parameters())].reduce((n, p) => n + 4 * p.size, 0);
  // warm-up: one forward/backward pass through the same code (shader compilation), not timed
  {
    const { estimateGradients } = await import('@lora/loraga');
    const g = await estimateGradients(model, lora, async (backward) => {
      await backward(
        () => model.forward(batches[0] as tf.Tensor2D, { labels: batches[0] as tf.Tensor2D }).loss as tf.Scalar,
      );
    });
    tf.dispose([...g.values()]);
  }
  const mem = () => tf.memory() as tf.MemoryInfo & { numBytesAllocatedInGPU?: number };
  // the peak of the bytes in use (torch.cuda.max_memory_allocated's counterpart), watched where every new
  // tensor passes (engine.trackTensor; instrumentation of this bench only): on webgpu the buffer manager's
  // bytes in use (a buffer counts once however many tensors view it; a released buffer counts until its
  // commands finish); elsewhere tfjs's numBytes, which counts every tensor, views (reshapes) included
  const engine = tf.engine() as unknown as { trackTensor(t: unknown, b: unknown): void; state: { numBytes: number } };
  const gpu = tf.backend() as unknown as { bufferManager?: { numBytesUsed: number } };
  const inUse = () => gpu.bufferManager?.numBytesUsed ?? engine.state.numBytes;
  const track = engine.trackTensor.bind(engine);
  let peakLive = inUse();
  engine.trackTensor = (t, b) => {
    track(t, b);
    const n = inUse();
    if (n > peakLive) peakLive = n;
  };
  const t0 = performance.now();
  const losses: number[] = [];
  await preprocessLoraga(
    model,
    lora,
    async (backward) => {
      for (const b of batches) losses.push(await backward(() => model.forward(b, { labels: b }).loss as tf.Scalar));
    },
    { offload, targetsPerPass },
  );
  const t1 = performance.now();
  manualSeed(0);
  const peft = getPeftModel(model, lora);
  await peft.initialized();
  // the last base-weight update has run when its value can be read
  await peft.loraLayers().next().value?.[1].baseLayer.weight.data();
  const t2 = performance.now();
  const m = mem();
  const out = {
    who: `ours, ${info.name}${offload ? ', offload' : ''}${targetsPerPass ? `, ${targetsPerPass} targets a pass` : ''}`,
    backend: info.name,
    adapter: info.adapter,
    offload,
    targetsPerPass: targetsPerPass ?? null,
    estimateS: (t1 - t0) / 1000,
    initS: (t2 - t1) / 1000,
    totalS: (t2 - t0) / 1000,
    // the webgpu pool keeps every buffer it ever made: its size at the end is the process's peak (reserved)
    peakGpuMiB: (m.numBytesAllocatedInGPU ?? Number.NaN) / MiB,
    peakLiveMiB: peakLive / MiB,
    weightsMiB: weightBytes / MiB,
    firstLoss: losses[0],
    targets: [...peft.loraLayers()].length,
  };
  console.log(JSON.stringify(out));
  tf.dispose(batches);
  peft.dispose();
}

/** Runs both of ours and the peer, each in its own process, and prints the table. */
function driver(): void {
  const rows: Record<string, unknown>[] = [];
  const run = (cmd: string, args: string[]) => {
    // each run gets a time limit, so that one slow configuration still leaves the others' rows
    const r = spawnSync(cmd, args, {
      encoding: 'utf8',
      maxBuffer: 64 * MiB,
      timeout: Number(values['child-timeout']) * 1000,
    });
    const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
    if (r.status !== 0 || !line) {
      console.error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}):\n${r.stdout}\n${r.stderr}`);
      return;
    }
    rows.push(JSON.parse(line));
  };
  const self = process.argv[1] as string;
  const common = ['--model', values.model, '--backend', values.backend];
  run(process.execPath, [self, 'child', 'plain', ...common]);
  run(process.execPath, [self, 'child', 'offload', ...common]);
  // one decoder layer's projections a pass: 8 forward/backward passes a batch
  run(process.execPath, [self, 'child', 'offload', '--per-pass', '7', ...common]);
  run(values.python, [values.peer, '--model', values.model, '--device', values.device]);
  const spec = MODELS[values.model] as (typeof MODELS)[string];
  const f = (x: unknown, d = 2) => (typeof x === 'number' ? x.toFixed(d) : '–');
  console.log(
    `\nLoRA-GA on the ${values.model} Llama: ${spec.batches} batches of ${spec.batch}×${spec.seq} tokens, every projection, r 8 (ArB2r + stable)\n`,
  );
  console.log(
    '| run | estimate s | init s | total s | peak GPU MiB (pool / reserved) | peak in use MiB (buffers / allocated) | weights MiB | first loss |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows)
    console.log(
      `| ${r.who} | ${f(r.estimateS)} | ${f(r.initS)} | ${f(r.totalS)} | ${f(r.peakGpuMiB, 0)} | ${f(r.peakLiveMiB, 0)} | ${f(r.weightsMiB, 0)} | ${f(r.firstLoss, 4)} |`,
    );
  console.log(`\n${JSON.stringify({ model: values.model, rows })}`);
}

if (positionals[0] === 'child')
  await child(positionals[1] === 'offload', values['per-pass'] === undefined ? undefined : Number(values['per-pass']));
else driver();
