// The registering module: importing the package runs it (listed in package.json "sideEffects").
import { registerLoraDispatcher, registerLoraInit, registerLoraVariant } from '@lora/core';
import { frozenDispatcher, gatedVariant, onesInit } from './method.js';

registerLoraInit('fixture_ones', onesInit, { kinds: ['linear'] });
registerLoraVariant(gatedVariant);
registerLoraDispatcher('fixture_frozen', frozenDispatcher);
