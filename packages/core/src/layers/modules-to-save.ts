import * as tf from '@tensorflow/tfjs-core';
import {
  Conv1d,
  Conv2d,
  Embedding,
  LayerNorm,
  Linear,
  Module,
  ModuleDict,
  RMSNorm,
  TransposedLinear,
  storedWeightRefusal,
  withoutInit,
} from '@lora/nn';

/** A fresh layer of the same kind and shape as `m`, with a copy of its weights. */
function copyLayer(m: Module): Module {
  const refused = storedWeightRefusal(m, 'modules_to_save');
  if (refused) throw new Error(refused);
  let copy: Module;
  if (m instanceof Linear) copy = withoutInit(() => new Linear(m.inFeatures, m.outFeatures, { bias: m.bias !== null }));
  else if (m instanceof TransposedLinear) copy = withoutInit(() => new TransposedLinear(m.nf, m.nx));
  else if (m instanceof Embedding)
    copy = withoutInit(
      () => new Embedding(m.numEmbeddings, m.embeddingDim, m.paddingIdx === null ? {} : { paddingIdx: m.paddingIdx }),
    );
  else if (m instanceof LayerNorm)
    copy = withoutInit(
      () =>
        new LayerNorm(m.normalizedShape, { eps: m.eps, elementwiseAffine: m.weight !== null, bias: m.bias !== null }),
    );
  else if (m instanceof RMSNorm) copy = withoutInit(() => new RMSNorm(m.weight.shape[0] as number, { eps: m.eps }));
  else if (m instanceof Conv2d || m instanceof Conv1d) {
    const Ctor = m instanceof Conv2d ? Conv2d : Conv1d;
    copy = withoutInit(
      () => new Ctor(m.inChannels, m.outChannels, m.kernelSize, { ...m.options, bias: m.bias !== null }),
    );
  } else {
    throw new Error(
      `modules_to_save: a ${m.constructor.name} cannot be copied yet (Linear, TransposedLinear, Embedding, LayerNorm, RMSNorm, Conv1d and Conv2d can)`,
    );
  }
  // loadStateDict shares the data (reference-counted), so the copy must get clones of its own
  const clones = Object.fromEntries(Object.entries(m.stateDict()).map(([k, t]) => [k, tf.clone(t)]));
  copy.loadStateDict(clones);
  tf.dispose(Object.values(clones));
  return copy;
}

/**
 * PEFT's `ModulesToSaveWrapper`: the original module (frozen) as `original_module` and a trainable
 * copy per adapter under `modules_to_save.<adapter>`; the active adapter's copy runs, and is what an
 * adapter file saves (under the module's own names).
 */
export class ModulesToSaveWrapper extends Module {
  originalModule: Module;
  modulesToSave: ModuleDict;
  activeAdapter: string | null = null;
  disabled = false;

  constructor(module: Module) {
    super();
    this.originalModule = this.registerModule('original_module', module);
    this.modulesToSave = this.registerModule('modules_to_save', new ModuleDict());
  }

  /** Adds a copy of the original for an adapter. */
  addAdapter(name: string): void {
    if (this.modulesToSave.has(name)) return;
    this.modulesToSave.set(name, copyLayer(this.originalModule));
  }

  deleteAdapter(name: string): void {
    this.modulesToSave.delete(name)?.dispose();
    if (this.activeAdapter === name) this.activeAdapter = null;
  }

  forward(...args: unknown[]): unknown {
    const active = this.activeAdapter !== null && !this.disabled && this.modulesToSave.has(this.activeAdapter);
    return (active ? this.modulesToSave.get(this.activeAdapter as string) : this.originalModule).call(...args);
  }
}
