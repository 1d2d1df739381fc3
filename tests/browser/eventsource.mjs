#!/usr/bin/env node
// Headless-Chromium EventSource harness for sse-bridge integration tests.
//
//   node tests/browser/eventsource.mjs --url <SSE URL> --page-port <PORT> --count <N>
//        [--event-types a,b,c] [--timeout-ms 30000] [--exit-on-closed]
//        [--chromium /usr/bin/chromium] [--sources N] [--ignore-certificate-errors]
//
// Serves one HTML page on http://127.0.0.1:<PORT>/ (a different origin from the
// SSE URL, so CORS is exercised), opens it in headless Chromium, and the page
// runs `new EventSource(url)`. Everything the EventSource reports is printed
// to stdout as one JSON object per line:
//
//   {"type":"open"}                                   first open
//   {"type":"reopen"}                                 every later open (reconnect)
//   {"type":"event","event":"message","data":"..","lastEventId":".."}
//   {"type":"error","readyState":0|1|2}               EventSource error event
//   {"type":"timeout","timeoutMs":..,"events":..,"opened":..}   (then exit 1)
//
// With --sources N (default 1) the page opens N EventSources on the same URL at
// once; every line then also carries "source": 0..N-1, "open"/"reopen" are per
// source, and --count counts the events of all sources together.
//
// --ignore-certificate-errors lets Chromium accept the test CA's certificate of an
// https:// SSE URL (tests/tls.rs only).
//
// Exit codes: 0 = <count> events printed; 1 = timeout; 2 = usage/launch/setup
// failure (message on stderr); 3 = --exit-on-closed and the EventSource reached
// readyState CLOSED (2) before <count> events (it will never reconnect, e.g.
// after a CORS failure or a non-200/non-event-stream response).
// stdout carries only JSON lines; diagnostics go to stderr.

import http from 'node:http';
import { chromium } from 'playwright-core';

const EXIT_OK = 0;
const EXIT_TIMEOUT = 1;
const EXIT_SETUP = 2;
const EXIT_CLOSED = 3;
const CLOSE_GRACE_MS = 5000; // hard process.exit if cleanup takes longer

const USAGE =
  'usage: node eventsource.mjs --url <SSE URL> --page-port <PORT> --count <N> ' +
  '[--event-types a,b,c] [--timeout-ms 30000] [--exit-on-closed] [--chromium PATH]';

function log(...args) {
  process.stderr.write(`[eventsource.mjs] ${args.join(' ')}\n`);
}

function die(msg, code = EXIT_SETUP) {
  log(msg);
  process.exit(code);
}

function parseArgs(argv) {
  const opts = {
    url: null,
    pagePort: null,
    count: null,
    eventTypes: [],
    timeoutMs: 30000,
    exitOnClosed: false,
    chromium: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    sources: 1,
    ignoreCertificateErrors: false,
  };
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq !== -1) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const next = () => {
      if (value !== undefined) return value;
      if (i + 1 >= argv.length) die(`missing value for ${arg}\n${USAGE}`);
      return argv[++i];
    };
    switch (arg) {
      case '--url': opts.url = next(); break;
      case '--page-port': opts.pagePort = next(); break;
      case '--count': opts.count = next(); break;
      case '--event-types': opts.eventTypes = next().split(',').map((s) => s.trim()).filter(Boolean); break;
      case '--timeout-ms': opts.timeoutMs = next(); break;
      case '--chromium': opts.chromium = next(); break;
      case '--exit-on-closed': opts.exitOnClosed = true; break;
      case '--sources': opts.sources = Number(next()); break;
      case '--ignore-certificate-errors': opts.ignoreCertificateErrors = true; break;
      case '-h': case '--help': process.stderr.write(USAGE + '\n'); process.exit(EXIT_OK); break;
      default: die(`unknown argument: ${arg}\n${USAGE}`);
    }
  }
  if (!opts.url) die(`--url is required\n${USAGE}`);
  try { new URL(opts.url); } catch { die(`--url is not a valid URL: ${opts.url}`); }
  const port = Number(opts.pagePort);
  if (opts.pagePort === null || !Number.isInteger(port) || port < 0 || port > 65535) {
    die(`--page-port must be an integer 0..65535\n${USAGE}`);
  }
  opts.pagePort = port;
  const count = Number(opts.count);
  if (opts.count === null || !Number.isInteger(count) || count < 1) die(`--count must be an integer >= 1\n${USAGE}`);
  opts.count = count;
  const timeoutMs = Number(opts.timeoutMs);
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) die('--timeout-ms must be a positive number');
  opts.timeoutMs = timeoutMs;
  if (!Number.isInteger(opts.sources) || opts.sources < 1) die('--sources must be an integer >= 1');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

// ---- stdout: strictly one JSON object per line ------------------------------
// (stdout writes to pipes and files are synchronous on Linux, so each line is
// flushed as soon as it is written.)
let finished = false; // once set, nothing more goes to stdout
function emit(obj) {
  if (finished) return;
  process.stdout.write(JSON.stringify(obj) + '\n');
}
process.stdout.on('error', (err) => {
  // Reader went away (EPIPE): nothing useful left to do.
  log(`stdout error: ${err.code || err.message}`);
  process.exit(finished ? process.exitCode ?? EXIT_OK : EXIT_SETUP);
});

// ---- the page ---------------------------------------------------------------
function pageHtml() {
  const cfg = JSON.stringify({ url: opts.url, eventTypes: opts.eventTypes, sources: opts.sources })
    .replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
  return `<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>sse-bridge EventSource harness</title></head>
<body>
<script>
(() => {
  const cfg = ${cfg};
  const send = (msg) => { window.__sseHarness(msg); };
  window.__sseHarnessEs = [];
  for (let source = 0; source < cfg.sources; source++) {
    let es;
    try {
      es = new EventSource(cfg.url);
    } catch (err) {
      send({ kind: 'construct-error', message: String(err) });
      return;
    }
    window.__sseHarnessEs.push(es);
    const onAny = (e) => {
      // Anything the server dispatched (including a server-sent "event: error"
      // or "event: open") is a MessageEvent; connection state changes are not.
      if (e instanceof MessageEvent) {
        send({ kind: 'event', source, event: e.type, data: e.data, lastEventId: e.lastEventId });
      } else if (e.type === 'open') {
        send({ kind: 'open', source });
      } else {
        send({ kind: 'error', source, readyState: es.readyState });
      }
    };
    for (const t of new Set(['open', 'error', 'message', ...cfg.eventTypes])) {
      es.addEventListener(t, onAny);
    }
  }
})();
</script>
</body></html>
`;
}

let server = null;
let browser = null;

function startServer() {
  const html = pageHtml();
  return new Promise((resolve, reject) => {
    const srv = http.createServer((req, res) => {
      const path = (req.url || '/').split('?')[0];
      if (req.method === 'GET' && (path === '/' || path === '/index.html')) {
        res.writeHead(200, {
          'Content-Type': 'text/html; charset=utf-8',
          'Cache-Control': 'no-store',
        });
        res.end(html);
      } else {
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        res.end('not found\n');
      }
    });
    srv.keepAliveTimeout = 1000;
    srv.once('error', reject);
    srv.listen(opts.pagePort, '127.0.0.1', () => {
      srv.removeListener('error', reject);
      srv.on('error', (err) => log(`page server error: ${err.message}`));
      resolve(srv);
    });
  });
}

// ---- shutdown ---------------------------------------------------------------
let shuttingDown = false;
async function shutdown(code) {
  if (shuttingDown) return;
  shuttingDown = true;
  finished = true;
  process.exitCode = code;
  // Hard fallback: never hang on browser/server close.
  setTimeout(() => {
    log(`cleanup took longer than ${CLOSE_GRACE_MS} ms; forcing exit`);
    process.exit(code);
  }, CLOSE_GRACE_MS).unref();
  try {
    if (browser) {
      // Close the EventSource first so the SSE server sees a clean disconnect.
      try {
        const pages = browser.contexts().flatMap((c) => c.pages());
        await Promise.all(pages.map((p) =>
          p.evaluate(() => { for (const es of window.__sseHarnessEs || []) es.close(); }).catch(() => {})));
      } catch { /* ignore */ }
      await browser.close().catch((err) => log(`browser.close: ${err.message}`));
    }
    if (server) {
      server.closeAllConnections?.();
      await new Promise((r) => server.close(() => r()));
    }
  } catch (err) {
    log(`cleanup error: ${err.message}`);
  }
  process.exit(code);
}

// ---- main -------------------------------------------------------------------
let events = 0;
let opens = 0;
const t0 = Date.now();

const overallTimer = setTimeout(() => {
  emit({ type: 'timeout', timeoutMs: opts.timeoutMs, events, opened: opens > 0 });
  log(`timeout after ${opts.timeoutMs} ms (${events}/${opts.count} events)`);
  shutdown(EXIT_TIMEOUT);
}, opts.timeoutMs);

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    log(`received ${sig}`);
    shutdown(sig === 'SIGINT' ? 130 : sig === 'SIGTERM' ? 143 : 129);
  });
}

const opensBySource = new Map();
function onPageMessage(msg) {
  if (finished || !msg || typeof msg !== 'object') return;
  // One source (the default) prints exactly the lines it always printed.
  const tag = opts.sources > 1 ? { source: msg.source } : {};
  switch (msg.kind) {
    case 'open': {
      opens += 1;
      const n = (opensBySource.get(msg.source) || 0) + 1;
      opensBySource.set(msg.source, n);
      emit({ type: n === 1 ? 'open' : 'reopen', ...tag });
      break;
    }
    case 'event':
      events += 1;
      emit({ type: 'event', event: msg.event, data: msg.data, lastEventId: msg.lastEventId, ...tag });
      if (events >= opts.count) {
        clearTimeout(overallTimer);
        log(`got ${events} events in ${Date.now() - t0} ms; closing`);
        shutdown(EXIT_OK);
      }
      break;
    case 'error':
      emit({ type: 'error', readyState: msg.readyState, ...tag });
      if (opts.exitOnClosed && msg.readyState === 2) {
        clearTimeout(overallTimer);
        log('EventSource is CLOSED (will not reconnect); exiting (--exit-on-closed)');
        shutdown(EXIT_CLOSED);
      }
      break;
    case 'construct-error':
      clearTimeout(overallTimer);
      log(`new EventSource() threw: ${msg.message}`);
      shutdown(EXIT_SETUP);
      break;
    default:
      log(`unknown page message: ${JSON.stringify(msg)}`);
  }
}

async function main() {
  try {
    server = await startServer();
  } catch (err) {
    clearTimeout(overallTimer);
    log(`cannot listen on 127.0.0.1:${opts.pagePort}: ${err.message}`);
    return shutdown(EXIT_SETUP);
  }
  const pageOrigin = `http://127.0.0.1:${server.address().port}`;
  log(`page origin ${pageOrigin}, SSE url ${opts.url}`);

  const tLaunch = Date.now();
  try {
    browser = await chromium.launch({
      executablePath: opts.chromium,
      headless: true,
      timeout: opts.timeoutMs,
      // We handle signals ourselves (shutdown() closes the browser).
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--disable-dev-shm-usage',
        '--no-proxy-server',
        ...(opts.ignoreCertificateErrors ? ['--ignore-certificate-errors'] : []),
      ],
    });
  } catch (err) {
    if (shuttingDown) return; // timed out meanwhile
    clearTimeout(overallTimer);
    log(`failed to launch Chromium at ${opts.chromium}: ${err.message}`);
    return shutdown(EXIT_SETUP);
  }
  if (shuttingDown) { await browser.close().catch(() => {}); return; }
  log(`chromium ${browser.version()} launched in ${Date.now() - tLaunch} ms`);
  browser.on('disconnected', () => {
    if (!shuttingDown) {
      clearTimeout(overallTimer);
      log('browser disconnected unexpectedly');
      shutdown(EXIT_SETUP);
    }
  });

  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('console', (m) => log(`[page console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (err) => log(`[page error] ${err.message}`));
    page.on('crash', () => log('[page crashed]'));
    await page.exposeFunction('__sseHarness', onPageMessage);
    await page.goto(`${pageOrigin}/`, { waitUntil: 'load', timeout: opts.timeoutMs });
    log(`page loaded ${Date.now() - t0} ms after start`);
  } catch (err) {
    if (shuttingDown) return;
    clearTimeout(overallTimer);
    log(`page setup failed: ${err.message}`);
    return shutdown(EXIT_SETUP);
  }
}

main().catch((err) => {
  if (shuttingDown) return;
  clearTimeout(overallTimer);
  log(`unexpected error: ${err && err.stack || err}`);
  shutdown(EXIT_SETUP);
});
