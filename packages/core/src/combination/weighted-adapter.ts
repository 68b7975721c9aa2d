import * as tf from '@tensorflow/tfjs-core';
import { withoutInit } from '@lora/nn';
import {
  type SourceFactors,
  type WeightedAdapterOptions,
  combineModuleFactors,
  planCombination,
} from './adapter-combination';
import type { LoraConfig } from '../lora-config';
import type { PeftModel } from '../peft-model';

/**
 * Adds an adapter that combines existing ones (PEFT's `add_weighted_adapter`) on Linear, Embedding,
 * Conv1d and Conv2d layers, with PEFT's math and quirks: the new config copies the first adapter's
 * with r = α = the new rank (so scaling is 1, or √rank with rsLoRA); `linear`-family types weight A
 * by sign(c)·√|c| and B by √|c| (c = w·s); `cat` stacks w·s·A and B; the `*svd` types decompose the
 * w-weighted combination of the ΔW (which hold their s) and keep the top singular triplets. The new
 * adapter is frozen and not activated. A name that exists already is left alone, as PEFT does.
 *
 * Differences from PEFT 0.21: the combined adapter is plain LoRA without `lora_bias` (PEFT would
 * keep the first adapter's DoRA magnitude and lora_B bias at their initial values); SVD types work
 * on Conv1d (PEFT 0.21 fails there, huggingface/peft#3769); results narrower than the new rank are
 * zero-padded; DARE's masks come from a seeded generator, not PyTorch's.
 *
 * @example
 * ```ts
 * await addWeightedAdapter(peft, ['a', 'b'], [0.7, 0.3], 'mix', { combinationType: 'svd', svdRank: 8 });
 * peft.setAdapter('mix');
 * ```
 */
export async function addWeightedAdapter(
  model: PeftModel,
  adapters: string[],
  weights: number[],
  name: string,
  options: WeightedAdapterOptions = {},
): Promise<void> {
  if (model.peftConfig.has(name)) return; // PEFT returns silently
  for (const a of adapters) if (!model.peftConfig.has(a)) throw new Error(`Adapter ${a} does not exist`);
  const shared = [...model.modulesToSaveWrappers()].filter(
    ([, w]) => adapters.filter((a) => w.modulesToSave.has(a)).length > 1,
  );
  if (shared.length)
    throw new Error(
      `Cannot add weighted adapters if they target the same module with modules_to_save, but found ${shared.length} such instance(s).`,
    );
  const plan = planCombination(
    adapters.map((a) => model.peftConfig.get(a) as LoraConfig),
    weights,
    options,
    (i) => adapters[i] as string,
  );
  // the layers are allocated at the new rank and overwritten below: no random initialisation
  withoutInit(() => model.addAdapter(name, { ...plan.config, initLoraWeights: false }));
  model.peftConfig.set(name, plan.config);
  try {
    for (const [path, layer] of model.loraLayers()) {
      if (!layer.settings.has(name)) continue;
      const A = layer.factorA(name);
      const B = layer.factorB(name);
      const sources: SourceFactors[] = [];
      for (const [i, a] of adapters.entries()) {
        if (layer.settings.has(a))
          sources.push({
            a: layer.factorA(a),
            b: layer.factorB(a),
            scaling: layer.scaling.get(a) as number,
            weight: weights[i] as number,
          });
      }
      if (sources.length === 0) {
        // the combined config targets a module none of the adapters has (PEFT raises here): no change there
        tf.tidy(() => {
          A.assign(tf.zerosLike(A));
          B.assign(tf.zerosLike(B));
        });
        continue;
      }
      const { a, b } = await combineModuleFactors(path, sources, plan);
      A.assign(a as tf.Tensor);
      B.assign(b as tf.Tensor);
      tf.dispose([a, b]);
    }
  } catch (e) {
    model.deleteAdapter(name);
    throw e;
  }
}
