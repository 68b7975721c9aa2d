/**
 * Registers tfjs-core's gradient functions. `initBackend` does this for you; import this
 * subpath only when you set a backend up yourself and train with `@lora/*`.
 *
 * tfjs-core registers no gradients by itself, and its ESM build uses extensionless imports that
 * plain Node cannot load, so the build bundles these registrations into this file.
 */
import '@tensorflow/tfjs-core/dist/register_all_gradients';
