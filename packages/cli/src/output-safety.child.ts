/**
 * The process the kill suite (output-safety.test.ts) starts and kills, bundled by the suite into one
 * file: `cli <args>` runs the `lora` command; `save-adapter <out> <seed> [--force] [--initial <dir>]` builds a model
 * with three adapters (default, second, third), each seeded, and saves them with `saveAdapter`.
 * Not part of the package.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type LoraLinear, getPeftModel, loraConfig, saveAdapter } from '@lora/core';
import { Linear, Module, ModuleList, withoutInit } from '@lora/nn';
import { initBackend } from '@lora/tensor';
import { runCli } from './cli';

/** Layers of the saved model, and the rank of each adapter: 3 × 24 × 2·128·1024 floats ≈ 75 MB of adapter files. */
export const SAVE_MODEL = { layers: 24, width: 1024, r: 128 };

class Block extends Module {
  proj = this.registerModule('proj', new Linear(SAVE_MODEL.width, SAVE_MODEL.width, { bias: false }));
  forward(x: tf.Tensor): tf.Tensor {
    return this.proj.call(x) as tf.Tensor;
  }
}

class Net extends Module {
  layers = this.registerModule('layers', new ModuleList(Array.from({ length: SAVE_MODEL.layers }, () => new Block())));
  forward(x: tf.Tensor): tf.Tensor {
    return x; // never called: the model is only saved
  }
}

// the suite times its kills from this line: the modules are loaded, the command's own work begins
console.error('started');
const [mode, ...args] = process.argv.slice(2);
if (mode === 'cli') {
  process.exitCode = await runCli(args, { out: (l) => console.log(l), err: (l) => console.error(l) });
} else if (mode === 'save-adapter') {
  const [out, seed] = args as [string, string];
  const at = args.indexOf('--initial');
  await initBackend('cpu');
  // drawn weights would take the child longer to build than to save: zeros, then a cheap seeded pattern
  const config = { r: SAVE_MODEL.r, targetModules: ['proj'], initLoraWeights: false as const };
  const peft = withoutInit(() => getPeftModel(new Net(), config));
  const names = ['default', 'second', 'third'];
  for (const name of names.slice(1)) withoutInit(() => peft.addAdapter(name, loraConfig(config)));
  let k = 0;
  for (const [, layer] of peft.loraLayers())
    for (const name of names) {
      const value = Number(seed) + 0.001 * k++;
      tf.tidy(() => (layer as LoraLinear).factorA(name).assign(tf.fill([SAVE_MODEL.r, SAVE_MODEL.width], value)));
      tf.tidy(() => (layer as LoraLinear).factorB(name).assign(tf.fill([SAVE_MODEL.width, SAVE_MODEL.r], -value)));
    }
  console.error('saving');
  try {
    await saveAdapter(peft, out, {
      force: args.includes('--force'),
      ...(at > 0 ? { pathInitialModelForWeightConversion: args[at + 1] } : {}),
      warn: (m) => console.error(`note: ${m}`),
    });
    console.error(`saved ${out}`);
  } catch (e) {
    console.error(`save-adapter: ${(e as Error).message}`);
    process.exitCode = 1;
  }
} else {
  console.error('usage: output-safety.child (cli <lora args> | save-adapter <out> <seed> [--force] [--initial <dir>])');
  process.exitCode = 2;
}
