import { registerLoraInit } from '@lora/core';
import { loraGaInit } from './lora-ga-init';

// init_lora_weights: 'lora_ga' on Linear and TransposedLinear layers; @lora/core gives Embedding and
// convolution layers PEFT's fallback for it (the default init)
registerLoraInit('lora_ga', loraGaInit);
