import { loraBuild } from '../../tsup.shared.js';

// register.ts is its own entry: it is listed in sideEffects, so that bundlers keep `import '@lora/eva'`
export default loraBuild(['src/index.ts', 'src/register.ts']);
