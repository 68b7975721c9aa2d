// @ts-check
import { mergeConfig } from 'vitest/config';
import { loraProject } from '../../vitest.shared.js';

export default mergeConfig(loraProject('@lora-examples/peft-roundtrip'), {
  test: { include: ['src/**/*.test.js'], testTimeout: 300_000 },
});
