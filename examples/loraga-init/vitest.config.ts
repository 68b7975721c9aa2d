import { loraProject } from '../../vitest.shared.js';

export default loraProject('@lora-examples/loraga-init');
