/**
 * Issue 20 round 4's second entry point: train-gpu.ts under the bundle name train-gpu-r4b.mjs, so that
 * the second device call runs this build while the first call's train-gpu-r4.mjs stays as it ran.
 */
import './train-gpu';
