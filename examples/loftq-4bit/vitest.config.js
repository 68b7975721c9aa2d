// @ts-check
import { mergeConfig } from 'vitest/config';
import { loraProject } from '../../vitest.shared.js';

export default mergeConfig(loraProject('@lora-examples/loftq-4bit'), { test: { include: ['src/**/*.test.js'] } });
