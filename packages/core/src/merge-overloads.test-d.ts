/**
 * Type tests (checked by `npm run typecheck`, i.e. `tsc --noEmit`, and by `vitest --typecheck`): a
 * safe merge is the only one that returns a Promise, and the overloads say so.
 */
import { describe, expectTypeOf, it } from 'vitest';
import type { Module } from '@lora/nn';
import type { LoraConfig, LoraConfigFields, LoraLinear, PeftModel, TunerLayer } from '@lora/core';
import { getPeftModel, registerLoraInit } from '@lora/core';

declare const peft: PeftModel;
declare const layer: LoraLinear;
declare const tuner: TunerLayer;
declare const checked: boolean;

describe('mergeAdapter, mergeAndUnload and merge: synchronous unless safeMerge is true', () => {
  it('PeftModel.mergeAdapter', () => {
    expectTypeOf(peft.mergeAdapter()).toEqualTypeOf<void>();
    expectTypeOf(peft.mergeAdapter({ adapterNames: ['a'] })).toEqualTypeOf<void>();
    expectTypeOf(peft.mergeAdapter({ safeMerge: false })).toEqualTypeOf<void>();
    expectTypeOf(peft.mergeAdapter({ safeMerge: true })).toEqualTypeOf<Promise<void>>();
    expectTypeOf(peft.mergeAdapter({ safeMerge: checked })).toEqualTypeOf<void | Promise<void>>();
  });

  it('PeftModel.mergeAndUnload', () => {
    expectTypeOf(peft.mergeAndUnload()).toEqualTypeOf<Module>();
    expectTypeOf(peft.mergeAndUnload({ safeMerge: false })).toEqualTypeOf<Module>();
    expectTypeOf(peft.mergeAndUnload({ safeMerge: true })).toEqualTypeOf<Promise<Module>>();
    expectTypeOf(peft.mergeAndUnload({ safeMerge: checked })).toEqualTypeOf<Module | Promise<Module>>();
  });

  it("a layer's merge; a TunerLayer's may be either", () => {
    expectTypeOf(layer.merge()).toEqualTypeOf<void>();
    expectTypeOf(layer.merge({ safeMerge: false, adapterNames: ['a'] })).toEqualTypeOf<void>();
    expectTypeOf(layer.merge({ safeMerge: true })).toEqualTypeOf<Promise<void>>();
    expectTypeOf(layer.merge({ safeMerge: checked })).toEqualTypeOf<void | Promise<void>>();
    expectTypeOf(tuner.merge).returns.toEqualTypeOf<void | Promise<void>>();
  });
});

describe('extension points', () => {
  it('an initialiser may be synchronous or return a Promise; registering returns the way back', () => {
    expectTypeOf(registerLoraInit('x', () => {})).toEqualTypeOf<() => void>();
    expectTypeOf(registerLoraInit).parameter(1).returns.toEqualTypeOf<void | Promise<void>>();
    expectTypeOf(tuner.updateLayer).returns.toEqualTypeOf<void | Promise<void>>();
    expectTypeOf(peft.initialized()).toEqualTypeOf<Promise<void>>();
  });

  it('method sub-configs: partial in what loraConfig and getPeftModel take, complete in a LoraConfig', () => {
    expectTypeOf<{ evaConfig: { rho: number } }>().toMatchTypeOf<LoraConfigFields>();
    expectTypeOf<LoraConfig>().toMatchTypeOf<LoraConfigFields>();
    expectTypeOf(getPeftModel).parameter(1).toEqualTypeOf<LoraConfig | LoraConfigFields>();
    expectTypeOf<LoraConfig['evaConfig']>().toEqualTypeOf<import('@lora/core').EvaConfig | null>();
    expectTypeOf<NonNullable<LoraConfig['loraGaConfig']>['direction']>().toEqualTypeOf<
      'ArBr' | 'A2rBr' | 'ArB2r' | 'random'
    >();
  });
});
