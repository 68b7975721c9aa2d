import { loraBuild } from '../../tsup.shared.js';

export default loraBuild(['src/index.ts', 'src/bin.ts']);
