// Build a JavaScript plugin into a component:
//   node build.mjs SOURCE.js WORLD OUT.wasm
// WORLD is `source`, `transform` or `sink` of the contract in ../wit. The source must live under
// this directory (componentize-js maps the working directory into the component so that
// relative imports such as '../../patchbay-sdk.js' resolve).
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const [source, world, out] = process.argv.slice(2);
if (!source || !['source', 'transform', 'sink'].includes(world) || !out) {
  console.error('usage: node build.mjs SOURCE.js source|transform|sink OUT.wasm');
  process.exit(2);
}
const sourcePath = relative(here, resolve(source));
if (sourcePath.startsWith('..')) {
  console.error(`${source}: put the plugin under ${here} so that its imports resolve`);
  process.exit(2);
}
process.chdir(here);
const { component } = await componentize({
  sourcePath,
  witPath: resolve(here, '../wit'),
  worldName: `patchbay:connector/${world}@0.1.0`,
  // The contract needs neither; leaving them out keeps wasi:http out of the imports.
  disableFeatures: ['http', 'fetch-event'],
});
await mkdir(dirname(resolve(out)), { recursive: true });
await writeFile(resolve(out), component);
console.error(`wrote ${out} (${(component.length / 1024 / 1024).toFixed(1)} MiB)`);
