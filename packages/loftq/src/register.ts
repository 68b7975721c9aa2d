// The registering module: importing @lora/loftq runs it (listed in package.json "sideEffects").
import { registerLoraDispatcher, registerLoraInit } from '@lora/core';
import { loftqLoraInit } from './loftq-lora-init';
import { dispatchQuantizedLinear } from './lora-quantized-linear';

registerLoraInit('loftq', loftqLoraInit, { kinds: ['linear'] });
registerLoraDispatcher('quantized-linear', dispatchQuantizedLinear);
