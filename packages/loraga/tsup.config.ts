import { loraBuild } from '../../tsup.shared.js';

// register.ts is an entry of its own so that dist/register.js exists for "sideEffects" to name
export default loraBuild(['src/index.ts', 'src/register.ts']);
