// Makes docs/demo.png: the demo page after a backend publish and a publish
// from the page. Run from clients/js: `npm run screenshot` (the herald binary
// must be built).

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Herald, closeAll, launchBrowser } from './harness.mjs';
import { runDemo } from './demo-scenario.mjs';

const out = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../docs/demo.png');
const browser = await launchBrowser();
const server = await Herald.start();
try {
  const { context, page } = await runDemo(browser, server);
  await page.screenshot({ path: out, fullPage: true });
  await context.close();
  console.log(`wrote ${out}`);
} finally {
  await closeAll(server, browser);
}
