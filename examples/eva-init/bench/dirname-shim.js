// Injected into the bundles by pack.sh (esbuild --inject): emscripten's Node loader in
// tfjs-backend-wasm reads __dirname, which an ES-module bundle does not have.
import { fileURLToPath } from 'node:url';

export const __dirname = fileURLToPath(new URL('.', import.meta.url));
export const __filename = fileURLToPath(import.meta.url);
