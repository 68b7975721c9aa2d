import * as tf from '@tensorflow/tfjs-core';
import { parseArgs } from 'node:util';
import { adapterTargets, moduleScaling, moduleTensors } from '@lora/core';
import { type Command, type Io, UsageError, readAdapter, startBackend } from '../shared';

const HELP = `lora inspect <adapter dir>

Reads adapter_config.json and adapter_model.safetensors (PEFT's layout) and prints the config, every
adapted module with its kind, rank, alpha and scaling, and the parameter counts.`;

async function inspect(args: string[], io: Io): Promise<number> {
  const { positionals, values } = parseArgs({
    args,
    allowPositionals: true,
    options: { help: { type: 'boolean' }, 'adapter-name': { type: 'string' } },
  });
  if (values.help) {
    io.out(HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('inspect takes one adapter directory; see lora inspect --help');
  await startBackend();
  const { config, tensors, root } = await readAdapter(positionals[0] as string, values['adapter-name']);
  try {
    io.out(`adapter ${root}`);
    io.out(
      `  peft_type LORA, r ${config.r}, lora_alpha ${config.loraAlpha}, rslora ${config.useRslora}, dora ${config.useDora}, dropout ${config.loraDropout}`,
    );
    io.out(
      `  target_modules ${JSON.stringify(config.targetModules)}${config.baseModelNameOrPath ? `, base model ${config.baseModelNameOrPath}` : ''}`,
    );
    let total = 0;
    const targets = adapterTargets(tensors);
    for (const [path, kind] of targets) {
      const { r, alpha, scaling } = moduleScaling(config, path);
      const params = Object.values(moduleTensors(tensors, path)).reduce((s, t) => s + t.size, 0);
      total += params;
      io.out(`  ${path}  ${kind}  r ${r}  alpha ${alpha}  scaling ${scaling.toPrecision(4)}  ${params} params`);
    }
    io.out(`  ${targets.size} modules, ${total} parameters in ${Object.keys(tensors).length} tensors`);
    return 0;
  } finally {
    tf.dispose(Object.values(tensors));
  }
}

/** `lora inspect`. */
export const inspectCommand: Command = {
  name: 'inspect',
  usage: 'lora inspect <adapter dir>                 config, targets, ranks and parameter counts',
  help: HELP,
  run: inspect,
};
