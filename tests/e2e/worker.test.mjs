// The worker engine of the npm package (pkg/client.js's createWorkerGemma, pkg/worker.js) in
// headless Chromium: tests/e2e/worker.html compares it with the main-thread Gemma on the same
// model (values, streamed pieces, named errors), aborts generations, streams and a load from
// the page, and times the page's main thread during a load through the worker (long tasks).
//
//   node tests/e2e/worker.test.mjs   (needs pkg/, the native CLI: target/debug/gemma or
//                                     $GEMMA_BIN, and `npm ci` in tests/e2e for tsc)
//
// The model is the tiny test checkpoint (tests/fixtures/tiny-f32, int4), converted here by the
// CLI into target/test-data/e2e-worker/model/: it loads in a second or two on SwiftShader, so
// every check is cheap. The demo test (demo.test.mjs) times a load of the real 270M through the
// same worker.

import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import { startMainThreadProbe } from './mainthread.mjs';
import {
  CHROMIUM_ARGS, CHROMIUM_PATH, OUT_DIR, REPO_ROOT, VIEWPORT,
  collectConsole, dumpConsole, ensureDir, printResult, secs,
} from './harness.mjs';

const GEMMA_BIN = process.env.GEMMA_BIN || path.join(REPO_ROOT, 'target', 'debug', 'gemma');
const FIXTURE = path.join(REPO_ROOT, 'tests', 'fixtures');
const WORK = path.join(REPO_ROOT, 'target', 'test-data', 'e2e-worker');
const MODEL_URL = '/target/test-data/e2e-worker/model/';
const RESULT_TIMEOUT = 10 * 60_000;

const missing = [
  [path.join(REPO_ROOT, 'pkg', 'client.js'), 'build the package: bash scripts/build-pkg.sh'],
  [GEMMA_BIN, 'build the CLI (cargo build --bin gemma), or set GEMMA_BIN'],
  [CHROMIUM_PATH, 'install Chromium (scripts/setup.sh), or set CHROMIUM=/path/to/chromium'],
].filter(([file]) => !fs.existsSync(file));
if (missing.length) {
  for (const [file, fix] of missing) console.log(`missing ${path.relative(REPO_ROOT, file) || file}: ${fix}`);
  process.exit(printResult(0, 1));
}

let passed = 0;
let failed = 0;
const report = (name, ok, detail) => {
  console.log(`check ${name} ... ${ok ? 'ok' : 'FAILED'}${detail ? `: ${detail}` : ''}`);
  if (ok) passed += 1;
  else failed += 1;
};

// The client's TypeScript declarations (pkg/client.d.ts): tests/e2e/worker-types/client.ts
// calls every method as an app would (chat.completions.create with the `openai` package's
// types) and marks what must not compile (@ts-expect-error), under tsc --noEmit.
{
  const tsc = path.join(REPO_ROOT, 'tests', 'e2e', 'node_modules', 'typescript', 'bin', 'tsc');
  const t0 = Date.now();
  if (!fs.existsSync(tsc)) {
    report('the client\'s types compile (tsc --noEmit)', false, 'typescript is not installed in tests/e2e (npm ci)');
  } else {
    const r = spawnSync(process.execPath, [tsc, '-p', path.join(REPO_ROOT, 'tests', 'e2e', 'worker-types', 'tsconfig.json')], { encoding: 'utf8' });
    report('the client\'s types compile (tsc --noEmit)', r.status === 0,
      r.status === 0 ? `worker-types/client.ts: no errors (${secs(Date.now() - t0)})` : `\n${r.stdout}${r.stderr}`);
  }
}

// The tiny checkpoint with the tiny tokenizer, converted to int4.
try {
  const t0 = Date.now();
  const src = path.join(WORK, 'checkpoint');
  fs.rmSync(WORK, { recursive: true, force: true });
  fs.mkdirSync(src, { recursive: true });
  for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(FIXTURE, 'tiny-f32', f), path.join(src, f));
  fs.copyFileSync(path.join(FIXTURE, 'tiny-tokenizer.json'), path.join(src, 'tokenizer.json'));
  execFileSync(GEMMA_BIN, ['convert', src, path.join(WORK, 'model'), '--quant', 'int4'], { stdio: 'ignore' });
  report('the tiny model converted (int4)', true, secs(Date.now() - t0));
} catch (e) {
  report('the tiny model converted (int4)', false, e.message);
  process.exit(printResult(passed, failed));
}

ensureDir(OUT_DIR);
const server = await startServer();
const consoleLines = [];
let browser;
let page;
try {
  browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
  page = await browser.newPage({ viewport: VIEWPORT });
  collectConsole(page, consoleLines);
  const url = `${server.url}/tests/e2e/worker.html?model=${encodeURIComponent(MODEL_URL)}`;
  console.log(`worker test: ${url} on Chromium ${browser.version()}`);
  const t0 = Date.now();
  await page.goto(url, { waitUntil: 'load' });
  // The page waits at window.__go for the main-thread probe, then loads through the worker.
  await page.waitForFunction(() => window.__go || window.__result, null, { timeout: 60_000, polling: 100 });
  const probe = await startMainThreadProbe(page);
  await page.evaluate(() => window.__go?.());
  await page.waitForFunction(() => window.__loaded || window.__result, null, { timeout: RESULT_TIMEOUT, polling: 100 });
  const main = await probe.stop();
  await page.waitForFunction(() => window.__result, null, { timeout: RESULT_TIMEOUT, polling: 250 });
  const result = await page.evaluate(() => window.__result);
  // The page's checks, with the main thread's verdict after the load's (the second).
  const probeCheck = { name: 'the main thread never blocks over 50 ms during the load', ok: main.ok, detail: main.summary };
  for (const c of [...result.checks.slice(0, 2), probeCheck, ...result.checks.slice(2)]) report(c.name, c.ok, c.detail);
  if (result.error) report('the page ran to the end', false, result.error);
  console.log(`(main thread during the load: longest long task ${main.longestLongTask} ms; longest task in the trace ${main.maxTaskMs.toFixed(1)} ms wall, ${main.maxTaskCpuMs.toFixed(1)} ms CPU)`);
  console.log(`(page finished in ${secs(Date.now() - t0)})`);
} catch (e) {
  report('the page reported a result', false, e?.message ?? e);
}
if (failed) {
  await page?.screenshot({ path: path.join(OUT_DIR, 'worker-failure.png') }).catch(() => {});
  dumpConsole(consoleLines);
}
await browser?.close().catch(() => {});
await server.close();
process.exit(printResult(passed, failed));
