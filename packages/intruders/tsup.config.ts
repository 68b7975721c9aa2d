import { loraBuild } from '../../tsup.shared.js';

export default loraBuild();
