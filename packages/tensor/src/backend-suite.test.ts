import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { describeEachBackend } from '@lora/tensor/testing';
import { backendSuite } from './backend-suite.cases';

await describeEachBackend('backend suite', (backend) => {
  it('reports the backend it started', () => {
    expect(tf.getBackend()).toBe(backend.name);
    expect(backend.info().adapter.length).toBeGreaterThan(0);
  });
  for (const c of backendSuite) it(c.name, c.run);
});
