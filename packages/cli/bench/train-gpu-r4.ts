/**
 * Issue 20 round 4's entry point: train-gpu.ts under its own bundle name (train-gpu-r4.mjs), so that
 * the device call runs this round's build whatever else is bundled as train-gpu.mjs.
 */
import './train-gpu';
