import * as tf from '@tensorflow/tfjs-core';
import type { LoraVariant, TunerLayer } from '@lora/core';
import { ArrowRouter, taskExperts } from './arrow-router';
import { gatheredDelta, groupedDelta, route } from './routed-delta';

/** The layer's dictionary of routers (PEFT's `lora_arrow`), by router adapter. */
export function routersOf(layer: TunerLayer) {
  return layer.variantModules<ArrowRouter>('lora_arrow');
}

function routerOf(layer: TunerLayer, name: string): ArrowRouter {
  return routersOf(layer).get(name);
}

/**
 * Backends whose data a forward pass may read synchronously (the CPU ones): there the routed delta
 * groups tokens by expert from the indices read back; elsewhere (webgpu) the gathered kernel runs.
 */
const READS_SYNC = new Set(['cpu', 'wasm', 'tensorflow']);

/** PEFT's messages: an Arrow router has no weights of its own to merge. */
const MERGE = 'Cannot merge an active Arrow router adapter. Remove it first.';
const UNMERGE = 'Cannot unmerge an active Arrow router adapter. Remove it first.';

/**
 * Arrow's router as a LoRA layer variant (PEFT's `ArrowLinearVariant`), asked for by `arrow_config`
 * on Linear-like layers. Its forward routes each token through its top-k task experts on the layer;
 * the router adapter's own A and B are never used (only its dropout, applied to the mixed delta).
 * Merging refuses, as PEFT's.
 */
export const arrowVariant: LoraVariant = {
  name: 'arrow',
  configKey: 'arrow_config',
  label: 'Arrow',
  requested: ({ config }) => config.arrowConfig != null,
  supports: (layer) => layer.kind === 'linear',
  init(layer, name, { config }) {
    const cfg = config.arrowConfig;
    if (!cfg) throw new Error('ArrowLinearVariant.init() did not receive an arrow_config');
    // PEFT copies the task list create_arrow_model set; a router loaded from a file without one takes the layer's experts
    const router = new ArrowRouter(cfg, cfg.taskAdapterNames ?? []);
    routersOf(layer).set(name, router);
    router.onAdapterChange(layer);
  },
  forward(layer, name, x, result) {
    const router = routerOf(layer, name);
    const where = `'${layer.settings.get(name)?.path || layer.constructor.name}'`;
    router.prepare(layer, where);
    const names = router.taskAdapterNames;
    const inF = x.shape.at(-1) as number;
    const tokens = tf.reshape(x, [-1, inF]) as tf.Tensor2D;
    const routing = route(tokens, router.prototypes as tf.Tensor2D, router.topK, router.routerTemperature);
    router.addUsage(routing.indices, routing.coefficients);
    const scales = names.map((n) => layer.scaling.get(n) as number);
    const factors = router.factors(layer);
    const delta = READS_SYNC.has(tf.getBackend())
      ? groupedDelta(
          tokens,
          routing,
          names.map((n, i) => ({
            a: factors.a[i] as tf.Variable,
            b: factors.b[i] as tf.Variable,
            scale: scales[i] as number,
            // made (or checked) only for the experts some token is routed to
            transposed: () => router.transposedFactors(layer, n),
          })),
        )
      : gatheredDelta(tokens, routing, router.stackedFactors(layer), scales);
    // PEFT applies the router's dropout to the mixed delta (not to x, as plain LoRA does)
    const dropped = layer.dropout(name).call(delta) as tf.Tensor;
    return tf.add(result, tf.reshape(dropped, [...x.shape.slice(0, -1), delta.shape[1] as number]));
  },
  merge() {
    throw new Error(MERGE);
  },
  unmerge() {
    throw new Error(UNMERGE);
  },
  onAdapterChange(layer, name) {
    routerOf(layer, name).onAdapterChange(layer);
  },
};

export { taskExperts };
