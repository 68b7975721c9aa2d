import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { expect, it, vi } from 'vitest';
import { configureKernels } from '@lora/kernels';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { FIX, baseNet, gptNet, readFixture } from '../fixture-nets.test-util';
import { type LoraLinear, loadAdapter } from '@lora/core';

/** The kernels one forward + backward ran, by name. */
async function kernelsOf(f: () => tf.TensorContainer): Promise<string[]> {
  const info = await tf.profile(async () => tf.dispose(f()));
  return info.kernels.map((k) => k.name);
}

// PEFT's gradients of the fan_in_fan_out fixtures (A and B are Linears whatever the base): on webgpu the
// plain LoRA adapters run LoraAddLowRank (B's product, scale and add in one dispatch), lora_B with a
// bias keeps the composite; both must give PEFT's outputs and gradients.
await describeEachBackend("LoraLinear's fused low-rank add", (backend) => {
  for (const [name, fused] of [
    ['fifo-plain', true],
    ['fifo-patterns', true],
    ['fifo-bias', false],
  ] as const) {
    it(`${name}: PEFT's gradients, ${fused ? 'through LoraAddLowRank on webgpu' : 'through the composite (lora_B has a bias)'}`, async () => {
      const expected = readFixture('fifo-expected.safetensors');
      const w = (k: string) => {
        const t = expected[k];
        if (!t) throw new Error(`no expected '${k}'`);
        return t;
      };
      const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
      const { model: peft } = await loadAdapter(gptNet(), join(FIX, name), { isTrainable: true });
      warn.mockRestore();
      peft.eval();
      const params = peft.trainableParameters();
      const names = new Map([...peft.namedParameters()].map(([n, p]) => [p, n]));
      const loss = () => tf.mean(tf.square(peft.call(w('x')) as tf.Tensor)) as tf.Scalar;
      const before = tf.memory().numTensors;
      const { value, grads } = tf.variableGrads(loss, params);
      for (const p of params)
        expect(
          maxRelativeError(await grads[p.name]!.data(), await w(`${name}.grad.${names.get(p)}`).data()),
          `${name} ${names.get(p)}`,
        ).toBeLessThan(1e-5);
      tf.dispose([value, ...Object.values(grads)]);
      expect(tf.memory().numTensors).toBe(before);
      const ran = await kernelsOf(() => {
        const r = tf.variableGrads(loss, params);
        return [r.value, ...Object.values(r.grads)];
      });
      expect(ran.includes('LoraAddLowRank')).toBe(backend.name === 'webgpu' && fused);
      if (backend.name === 'webgpu') {
        // off, the same model takes the composite: the switch is what the bench compares
        configureKernels({ fusedLora: false });
        try {
          const off = await kernelsOf(() => peft.call(w('x')) as tf.Tensor);
          expect(off.includes('LoraAddLowRank')).toBe(false);
        } finally {
          configureKernels({});
        }
      }
      peft.dispose();
      tf.dispose(Object.values(expected));
    });
  }
});

// lora_A (and hooks on it) runs once a forward whichever path takes the low-rank term
await describeEachBackend('LoraLinear runs lora_A once a forward', () => {
  it('fifo-plain: a forward hook on every lora_A sees one call a forward, and the output is unchanged', async () => {
    const expected = readFixture('fifo-expected.safetensors');
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
    const { model: peft } = await loadAdapter(gptNet(), join(FIX, 'fifo-plain'));
    warn.mockRestore();
    peft.eval();
    const x = expected.x as tf.Tensor;
    const plain = peft.call(x) as tf.Tensor;
    const calls = new Map<string, number>();
    const handles = [...peft.loraLayers()].map(([path, layer]) =>
      (layer as LoraLinear).loraA.get('default').registerForwardHook(() => {
        calls.set(path, (calls.get(path) ?? 0) + 1);
        return undefined;
      }),
    );
    const before = tf.memory().numTensors;
    const hooked = peft.call(x) as tf.Tensor;
    expect(calls.size).toBeGreaterThan(0);
    for (const [path, n] of calls) expect(n, path).toBe(1);
    expect(maxRelativeError(await hooked.data(), await plain.data())).toBeLessThan(1e-6);
    hooked.dispose();
    expect(tf.memory().numTensors).toBe(before);
    for (const h of handles) h.remove();
    plain.dispose();
    peft.dispose();
    tf.dispose(Object.values(expected));
  });
});

// A plain Linear base (the PEFT fixtures' Net): the whole LoRA Linear is one linearLowRank where the
// tiled matmul takes the product (forced here: the fixture's products are small), plus the bias.
await describeEachBackend("LoraLinear's fused forward (base product and low-rank term in one dispatch)", (backend) => {
  it("peft-qv: PEFT's outputs, and the composite's LoRA gradients, through LoraLinearLowRank on webgpu", async () => {
    const expected = readFixture('expected.safetensors');
    const { model: peft } = await loadAdapter(baseNet(), join(FIX, 'peft-qv'), { isTrainable: true });
    peft.eval();
    const x = expected.x as tf.Tensor;
    const params = peft.trainableParameters();
    const grads = () => {
      const { value, grads: g } = tf.variableGrads(
        () => tf.mean(tf.square(peft.call(x) as tf.Tensor)) as tf.Scalar,
        params,
      );
      value.dispose();
      return g;
    };
    configureKernels({ fusedLora: false });
    const ref = grads();
    configureKernels({ matmul: 'tiled-64' });
    try {
      const before = tf.memory().numTensors;
      const y = peft.call(x) as tf.Tensor;
      expect(maxRelativeError(await y.data(), await (expected['peft-qv.out'] as tf.Tensor).data())).toBeLessThan(1e-5);
      y.dispose();
      const got = grads();
      for (const p of params)
        expect(maxRelativeError(await got[p.name]!.data(), await ref[p.name]!.data()), p.name).toBeLessThan(1e-5);
      tf.dispose(Object.values(got));
      expect(tf.memory().numTensors).toBe(before);
      const ran = await kernelsOf(() => peft.call(x) as tf.Tensor);
      expect(ran.includes('LoraLinearLowRank')).toBe(backend.name === 'webgpu');
    } finally {
      configureKernels({});
    }
    tf.dispose([...Object.values(ref), ...Object.values(expected)]);
    peft.dispose();
  });
});
