// Puts the examples' third-party libraries into vendor/ (not committed):
// Yjs bundled with its dependency lib0 into one ES module, uPlot's own ES
// module and stylesheet copied as they are. Run by `npm ci` (postinstall).

import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const vendor = path.join(here, 'vendor');
mkdirSync(vendor, { recursive: true });

await build({
  stdin: { contents: "export * from 'yjs';", resolveDir: here, loader: 'js' },
  bundle: true,
  format: 'esm',
  target: 'es2020',
  minify: true,
  legalComments: 'inline',
  outfile: path.join(vendor, 'yjs.mjs'),
  logLevel: 'warning',
});

const uplot = path.join(here, 'node_modules', 'uplot', 'dist');
copyFileSync(path.join(uplot, 'uPlot.esm.js'), path.join(vendor, 'uplot.mjs'));
copyFileSync(path.join(uplot, 'uPlot.min.css'), path.join(vendor, 'uplot.css'));
console.log(`examples: vendor libraries ready in ${path.relative(process.cwd(), vendor) || '.'}`);
