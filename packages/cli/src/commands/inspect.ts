import * as tf from '@tensorflow/tfjs-core';
import { LORA_MODULE_SUFFIXES, PEFT_KEY_PREFIX, PEFT_SUFFIX, adapterTargets, moduleScaling, peftKey } from '@lora/core';
import { type Command, type Io, UsageError, parseCommandArgs, readAdapter, startBackend } from '../shared';

const HELP = `lora inspect <adapter dir> [--json] [--adapter-name NAME]

Reads adapter_config.json and adapter_model.safetensors (PEFT's layout) and prints the config, every
adapted module with its kind (linear, embedding, conv1d/2d/3d; "+dora" for DoRA), rank, alpha, scaling
and parameter count, then the other weights saved with the adapter (modules_to_save copies, embedding
layers saved with save_embedding_layers, trainable-token rows), counted apart from the LoRA parameters.

Options:
  --json                one JSON object on stdout instead of the table
  --adapter-name NAME   the sub-folder of a multi-adapter directory`;

async function inspect(args: string[], io: Io): Promise<number> {
  const { positionals, values } = parseCommandArgs({
    args,
    allowPositionals: true,
    options: { help: { type: 'boolean' }, json: { type: 'boolean' }, 'adapter-name': { type: 'string' } },
  });
  if (values.help) {
    io.out(HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('inspect takes one adapter directory; see lora inspect --help');
  await startBackend(io);
  const { config, tensors, root } = await readAdapter(positionals[0] as string, values['adapter-name'], io);
  try {
    const owned = new Set<string>();
    const modules = [...adapterTargets(tensors)].map(([path, kind]) => {
      const { r, alpha, scaling } = moduleScaling(config, path);
      const keys = LORA_MODULE_SUFFIXES.map((s) => peftKey(path, s)).filter((k) => k in tensors);
      for (const k of keys) owned.add(k);
      const dora = peftKey(path, PEFT_SUFFIX.magnitude) in tensors;
      const params = keys.reduce((s, k) => s + (tensors[k] as tf.Tensor).size, 0);
      return { path, kind, dora, r, alpha, scaling, params };
    });
    const others = Object.entries(tensors)
      .filter(([k]) => !owned.has(k))
      .map(([k, t]) => ({ name: k, shape: t.shape, params: t.size }));
    const loraParams = modules.reduce((s, m) => s + m.params, 0);
    const otherParams = others.reduce((s, o) => s + o.params, 0);
    if (values.json) {
      io.out(
        JSON.stringify(
          {
            adapter: root,
            config: {
              peftType: config.peftType,
              r: config.r,
              loraAlpha: config.loraAlpha,
              useRslora: config.useRslora,
              useDora: config.useDora,
              loraDropout: config.loraDropout,
              targetModules: config.targetModules,
              baseModelNameOrPath: config.baseModelNameOrPath,
            },
            modules,
            otherTensors: others,
            loraParameters: loraParams,
            otherParameters: otherParams,
            tensors: Object.keys(tensors).length,
          },
          null,
          2,
        ),
      );
      return 0;
    }
    io.out(`adapter ${root}`);
    io.out(
      `  peft_type LORA, r ${config.r}, lora_alpha ${config.loraAlpha}, rslora ${config.useRslora}, dora ${config.useDora}, dropout ${config.loraDropout}`,
    );
    io.out(
      `  target_modules ${JSON.stringify(config.targetModules)}${config.baseModelNameOrPath ? `, base model ${config.baseModelNameOrPath}` : ''}`,
    );
    for (const m of modules)
      io.out(
        `  ${m.path}  ${m.kind}${m.dora ? '+dora' : ''}  r ${m.r}  alpha ${m.alpha}  scaling ${m.scaling.toPrecision(4)}  ${m.params} params`,
      );
    io.out(`  ${modules.length} modules, ${loraParams} parameters in ${owned.size} tensors`);
    if (others.length) {
      const shown = others.slice(0, 5).map((o) => `${o.name.slice(PEFT_KEY_PREFIX.length)} [${o.shape.join(', ')}]`);
      io.out(
        `  also saved with the adapter (modules_to_save, embedding layers, trainable tokens): ${others.length} tensors, ${otherParams} parameters: ${shown.join(', ')}${others.length > 5 ? ', …' : ''}`,
      );
    }
    return 0;
  } finally {
    tf.dispose(Object.values(tensors));
  }
}

/** `lora inspect`. */
export const inspectCommand: Command = {
  name: 'inspect',
  usage: 'lora inspect <adapter dir> [--json]          config, targets, ranks and parameter counts',
  help: HELP,
  run: inspect,
};
