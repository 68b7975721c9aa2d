/**
 * Issue 20 round 5's entry point: train-gpu.ts under the bundle name train-gpu-r5.mjs (see
 * train-gpu-device-r5.sh), so that earlier rounds' bundles stay as they ran.
 */
import './train-gpu';
