import { registerLoraVariant } from '@lora/core';
import { arrowVariant } from './arrow-variant';

// arrow_config: PEFT's ("arrow_config",) → ArrowLinearVariant, on Linear-like layers
registerLoraVariant(arrowVariant);
