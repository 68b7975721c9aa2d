import './register.js';

export { FrozenLinear, LoraFrozenLinear, gatedVariant, initialised } from './method.js';
