// The demo page at `/` as a new user meets it: it subscribes to "demo" on
// load, shows what a backend publishes, and publishes from its form. Shared by
// demo.test.mjs and screenshot.mjs.

/** Drives the demo page of `server` in a fresh page; returns the page. */
export async function runDemo(browser, server, { viewport = { width: 900, height: 820 } } = {}) {
  const context = await browser.newContext({ viewport, colorScheme: 'light' });
  const page = await context.newPage();
  await page.goto(`${server.url}/`);
  const status = page.getByRole('status');
  await status.getByText(/^Status: open/).waitFor({ timeout: 15_000 });

  const events = page.getByRole('list', { name: 'Events' });
  await server.publish('demo', { order: 1042, status: 'shipped' });
  await events.getByText('"status":"shipped"').waitFor();

  // A named event: the page listens for the name it publishes with.
  await page.getByLabel('Event name').fill('chat');
  await page.getByLabel('Data').fill('{"from": "this page", "text": "hi there"}');
  await page.getByRole('button', { name: 'Publish' }).click();
  await events.getByText('hi there').waitFor();
  await page.getByText(/^Published \(id /).waitFor();

  await server.publish('demo', { from: 'the backend', text: 'hello, page' }, { event: 'chat' });
  await events.getByText('hello, page').waitFor();
  return { context, page };
}
