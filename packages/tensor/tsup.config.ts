import { loraBuild } from '../../tsup.shared.js';

export default loraBuild(['src/index.ts', 'src/node.ts', 'src/hub.ts', 'src/testing.ts', 'src/register-gradients.ts'], {
  // tfjs-core registers no gradients by itself and its ESM files use extensionless imports that
  // plain Node cannot load: bundle the gradient registrations (their registries are global, so this
  // second copy of the code registers into the same engine).
  noExternal: [/^@tensorflow\/tfjs-core\/dist\//],
});
