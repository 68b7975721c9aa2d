import { describe, expect, it } from 'vitest';
import { findMinimalTargetModules } from './minimal-targets';

describe('findMinimalTargetModules', () => {
  it("finds PEFT's docstring example", () => {
    const targets = [
      ...Array.from({ length: 100 }, (_, i) => `model.decoder.layers.${i}.self_attn.q_proj`),
      ...Array.from({ length: 100 }, (_, i) => `model.decoder.layers.${i}.self_attn.v_proj`),
    ];
    const others = Array.from({ length: 100 }, (_, i) => `model.encoder.layers.${i}.self_attn.k_proj`);
    expect(findMinimalTargetModules(targets, others)).toEqual(['q_proj', 'v_proj']);
  });

  it('keeps longer suffixes where the short one also names another module', () => {
    const targets = ['model.layers.0.mlp.down_proj', 'model.layers.1.mlp.down_proj'];
    const others = ['model.layers.2.mlp.down_proj'];
    expect(findMinimalTargetModules(targets, others)).toEqual(['0.mlp.down_proj', '1.mlp.down_proj']);
  });

  it('refuses an empty list and overlapping names, as PEFT', () => {
    expect(() => findMinimalTargetModules([], [])).toThrow('target_modules should be a list');
    expect(() => findMinimalTargetModules(['a'], ['a'])).toThrow('common elements');
  });
});
