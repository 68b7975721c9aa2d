import './register';

export { addArrowRouter, arrowRouters, buildArrowPrototypes, createArrowModel } from './create-arrow-model';
export type { CreateArrowModelOptions } from './create-arrow-model';
export { ARROW_ROUTER, ArrowRouter, taskExperts } from './arrow-router';
export { arrowVariant } from './arrow-variant';
export { checkArrowExperts } from './compatibility';
export { exactPrototype, powerIterationPrototypes } from './prototypes';
export type { PrototypeMethod } from './prototypes';
export { route, groupedDelta, gatheredDelta } from './routed-delta';
export type { Expert, Routing } from './routed-delta';
export { ArrowError } from './errors';
export type { ArrowErrorCode } from './errors';
export { arrowConfig } from '@lora/core';
export type { ArrowConfig } from '@lora/core';
