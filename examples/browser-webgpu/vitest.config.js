// @ts-check
import { mergeConfig } from 'vitest/config';
import { loraProject } from '../../vitest.shared.js';

export default mergeConfig(loraProject('@lora-examples/browser-webgpu'), {
  test: { include: ['src/**/*.test.js'], testTimeout: 1_800_000, hookTimeout: 300_000 },
});
