// @ts-check
import { defaultClientConditions, defineConfig } from 'vite';

export default defineConfig({
  // the workspace packages from their TypeScript sources (no build of them needed first)
  resolve: { conditions: ['@lora/source', ...defaultClientConditions] },
  // fortune-llama's weights stay files (fetched), never inlined
  build: { target: 'es2022', assetsInlineLimit: 0, chunkSizeWarningLimit: 4096 },
  optimizeDeps: { exclude: ['@tensorflow/tfjs-backend-wasm'] },
});
