#!/usr/bin/env node
// Headless-Chromium driver for the bridge's own demo page (GET / with server.demo_page).
//
//   node tests/browser/demo_page.mjs --url http://127.0.0.1:<port>/ --count <N>
//        [--publish-token T --publish-topic demo --publish-data text]
//        [--timeout-ms 30000] [--chromium /usr/bin/chromium]
//
// Opens the page as a newcomer would and reports what it shows, one JSON object per line:
//
//   {"type":"status","status":"open"}                  the page's status line changed
//   {"type":"row","kind":"event","event":"message","id":"..","data":".."}
//                                                      a row appeared in the page's log
//                                                      (kind: event, gap, reconnect, error)
//   {"type":"published","status":200,"text":"published {..}"}
//                                                      with --publish-token: the page's publish
//                                                      form was filled and sent once the stream
//                                                      was open; its result line
//   {"type":"timeout","timeoutMs":..,"rows":..}        (then exit 1)
//
// Exit codes: 0 = <count> rows of kind "event" seen (and, with --publish-token, the form's result);
// 1 = timeout; 2 = usage/launch/setup failure.
// Unlike eventsource.mjs this serves no page of its own: the page under test is the bridge's.

import { chromium } from 'playwright-core';

const CLOSE_GRACE_MS = 5000;
const USAGE =
  'usage: node demo_page.mjs --url <page URL> --count <N> [--publish-token T ' +
  '--publish-topic demo --publish-data text] [--timeout-ms 30000] [--chromium PATH]';

const log = (...a) => process.stderr.write(`[demo_page.mjs] ${a.join(' ')}\n`);
const die = (msg) => { log(msg); process.exit(2); };

const opts = {
  url: null, count: null, timeoutMs: 30000, chromium: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  publishToken: null, publishTopic: 'demo', publishData: 'hello from the demo page',
};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const next = () => (i + 1 < argv.length ? argv[++i] : die(`missing value for ${argv[i]}\n${USAGE}`));
  switch (argv[i]) {
    case '--url': opts.url = next(); break;
    case '--count': opts.count = Number(next()); break;
    case '--timeout-ms': opts.timeoutMs = Number(next()); break;
    case '--chromium': opts.chromium = next(); break;
    case '--publish-token': opts.publishToken = next(); break;
    case '--publish-topic': opts.publishTopic = next(); break;
    case '--publish-data': opts.publishData = next(); break;
    default: die(`unknown argument: ${argv[i]}\n${USAGE}`);
  }
}
if (!opts.url || !Number.isInteger(opts.count) || opts.count < 1) die(USAGE);
if (!(opts.timeoutMs > 0)) die('--timeout-ms must be positive');

let finished = false;
const emit = (obj) => { if (!finished) process.stdout.write(JSON.stringify(obj) + '\n'); };

let browser = null;
let shuttingDown = false;
async function shutdown(code) {
  if (shuttingDown) return;
  shuttingDown = true;
  finished = true;
  setTimeout(() => process.exit(code), CLOSE_GRACE_MS).unref();
  if (browser) await browser.close().catch((err) => log(`browser.close: ${err.message}`));
  process.exit(code);
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => shutdown(sig === 'SIGINT' ? 130 : 143));

let rows = 0;
let events = 0;
const timer = setTimeout(() => {
  emit({ type: 'timeout', timeoutMs: opts.timeoutMs, rows });
  shutdown(1);
}, opts.timeoutMs);

let page = null;
let published = false;
let publishDone = false;
async function publishThroughPage() {
  await page.fill('#token', opts.publishToken);
  await page.fill('#pub-topic', opts.publishTopic);
  await page.fill('#pub-data', opts.publishData);
  await page.click('#publish');
  const status = await page.waitForFunction(
    () => document.getElementById('publish-result').dataset.status, null, { timeout: opts.timeoutMs });
  emit({
    type: 'published',
    status: Number(await status.jsonValue()),
    text: await page.textContent('#publish-result'),
  });
  publishDone = true;
  finishIfDone();
}

// Done once <count> event rows were seen and, with --publish-token, the form's result too.
function finishIfDone() {
  if (events >= opts.count && (!opts.publishToken || publishDone)) {
    clearTimeout(timer);
    shutdown(0);
  }
}

// Called by the page-side observer below, for each change it sees.
function onPage(msg) {
  if (finished) return;
  if (msg.kind === 'status') {
    emit({ type: 'status', status: msg.status });
    if (msg.status === 'open' && opts.publishToken && !published) {
      published = true;
      publishThroughPage().catch((err) => { log(`publishing through the page failed: ${err.message}`); shutdown(2); });
    }
    return;
  }
  rows += 1;
  emit({ type: 'row', kind: msg.row.kind, event: msg.row.type, id: msg.row.id, data: msg.row.data });
  if (msg.row.kind === 'event') {
    events += 1;
    finishIfDone();
  }
}

async function main() {
  try {
    browser = await chromium.launch({
      executablePath: opts.chromium, headless: true, timeout: opts.timeoutMs,
      handleSIGINT: false, handleSIGTERM: false, handleSIGHUP: false,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', '--no-proxy-server'],
    });
  } catch (err) {
    clearTimeout(timer);
    log(`failed to launch Chromium at ${opts.chromium}: ${err.message}`);
    return shutdown(2);
  }
  const context = await browser.newContext();
  page = await context.newPage();
  page.on('console', (m) => log(`[page console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (err) => log(`[page error] ${err.message}`));
  await page.exposeFunction('__demoHarness', onPage);
  // Watch the page's own status line and log from the moment the document exists, before its
  // script runs, so no change is missed.
  await page.addInitScript(() => {
    document.addEventListener('DOMContentLoaded', () => {
      const status = document.getElementById('status');
      let last = null;
      const report = () => {
        if (status.textContent !== last) {
          last = status.textContent;
          window.__demoHarness({ kind: 'status', status: last });
        }
      };
      new MutationObserver(report).observe(status, { childList: true, characterData: true, subtree: true });
      report();
      new MutationObserver((changes) => {
        for (const c of changes) {
          for (const li of c.addedNodes) {
            const data = li.querySelector('.data');
            window.__demoHarness({
              kind: 'row',
              row: { kind: li.dataset.kind, type: li.dataset.type, id: li.dataset.id, data: data ? data.textContent : '' },
            });
          }
        }
      }).observe(document.getElementById('log'), { childList: true });
    });
  });
  const response = await page.goto(opts.url, { waitUntil: 'load', timeout: opts.timeoutMs });
  if (!response || response.status() !== 200) {
    clearTimeout(timer);
    log(`GET ${opts.url} answered ${response && response.status()}`);
    return shutdown(2);
  }
}

main().catch((err) => {
  if (shuttingDown) return;
  clearTimeout(timer);
  log(`unexpected error: ${err && err.stack || err}`);
  shutdown(2);
});
