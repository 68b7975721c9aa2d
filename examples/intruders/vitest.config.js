// @ts-check
import { mergeConfig } from 'vitest/config';
import { loraProject } from '../../vitest.shared.js';

export default mergeConfig(loraProject('@lora-examples/intruders'), {
  // 20 s alone on 2 cores; 325 s in a clean-clone CI run (2026-12-04) while the CLI's kill suite and the other
  // packages' suites held both cores (load 13–16): the limit is a guard against a hang, not a timing
  test: { include: ['src/**/*.test.js'], testTimeout: 900_000 },
});
