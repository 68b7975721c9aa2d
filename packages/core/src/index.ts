export { LoraConfigError, loraConfig, loraConfigFromJson, loraConfigToJson, loraScaling } from './lora-config';
export type { InitLoraWeights, LoraConfig } from './lora-config';
export { TargetModuleError, matchModule, resolveTargets } from './targets';
export type { ResolvedTargets } from './targets';
export { LoraLinear } from './lora-linear';
export type { AdapterSettings } from './lora-linear';
export { LoraModel, PeftModel, getPeftModel, patternKey } from './peft-model';
export { adapterStateDict, loadAdapter, saveAdapter, serializeAdapter } from './adapter-io';
export type { LoadAdapterResult } from './adapter-io';
