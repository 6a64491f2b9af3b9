#!/usr/bin/env node
// Build a JavaScript plugin into a component:
//   patchbay-js-build SOURCE.js WORLD OUT.wasm      (installed from npm)
//   node build.mjs SOURCE.js WORLD OUT.wasm          (in a checkout)
// WORLD is `source`, `transform` or `sink` of the contract in ./wit (a copy of the
// repository's wit/, kept identical by a test). The source may live anywhere: it is bundled
// first (rolldown), its imports of this SDK (`patchbay-sdk`, or a relative path to
// patchbay-sdk.js) included, the contract's interfaces (`patchbay:…`, `wasi:…`) left as
// imports; then componentize-js builds the component from the one bundled file.
import { componentize } from '@bytecodealliance/componentize-js';
import { rolldown } from 'rolldown';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const [source, world, out] = process.argv.slice(2);
if (!source || !['source', 'transform', 'sink'].includes(world) || !out) {
  console.error('usage: patchbay-js-build SOURCE.js source|transform|sink OUT.wasm');
  process.exit(2);
}
const bundle = await rolldown({
  input: resolve(source),
  external: [/^patchbay:/, /^wasi:/],
  platform: 'neutral',
  logLevel: 'warn',
});
const { output } = await bundle.generate({ format: 'esm' });
await bundle.close();
// componentize-js maps the working directory into the component: a folder of its own.
const work = await mkdtemp(join(tmpdir(), 'patchbay-js-'));
try {
  await writeFile(join(work, 'plugin.js'), output[0].code);
  const target = resolve(out);
  process.chdir(work);
  const { component } = await componentize({
    sourcePath: 'plugin.js',
    witPath: resolve(here, 'wit'),
    worldName: `patchbay:connector/${world}@0.2.0`,
    // The contract needs neither; leaving them out keeps wasi:http out of the imports.
    disableFeatures: ['http', 'fetch-event'],
  });
  await mkdir(dirname(target), { recursive: true });
  await writeFile(target, component);
  console.error(`wrote ${out} (${(component.length / 1024 / 1024).toFixed(1)} MiB)`);
} finally {
  await rm(work, { recursive: true, force: true });
}
