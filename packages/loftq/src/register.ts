// The registering module: importing @lora/loftq runs it (listed in package.json "sideEffects").
import { registerLoraInit } from '@lora/core';
import { loftqLoraInit } from './loftq-lora-init';

registerLoraInit('loftq', loftqLoraInit, { kinds: ['linear'] });
