// Proves the npm package installs and works in a plain web page: `npm install` of pkg/ into
// tests/e2e/consumer, then that page (an import map, no bundler) runs the public API in
// headless Chromium and reports its checks in window.__result.
//
//   node tests/e2e/consumer.test.mjs    (after `npm ci` in tests/e2e)
//
// Needs pkg/ (bash scripts/build-pkg.sh) and a model in www/models/default/.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import {
  CHROMIUM_ARGS, CHROMIUM_PATH, MODEL_DIR, OUT_DIR, REPO_ROOT, VIEWPORT,
  collectConsole, dumpConsole, ensureDir, printResult, secs,
} from './harness.mjs';

const CONSUMER_DIR = path.join(REPO_ROOT, 'tests', 'e2e', 'consumer');
const RESULT_TIMEOUT = 30 * 60_000; // load + a few short generations on SwiftShader

const missing = [
  [path.join(REPO_ROOT, 'pkg', 'package.json'), 'build the package: bash scripts/build-pkg.sh'],
  [path.join(MODEL_DIR, 'manifest.json'), 'prepare the default model in www/models/default/ (see the README)'],
  [CHROMIUM_PATH, 'install Chromium (scripts/setup.sh), or set CHROMIUM=/path/to/chromium'],
].filter(([file]) => !fs.existsSync(file));
if (missing.length) {
  for (const [file, fix] of missing) console.log(`missing ${path.relative(REPO_ROOT, file) || file}: ${fix}`);
  process.exit(printResult(0, 1));
}

// 1. Install the package the way an app would.
try {
  const t0 = Date.now();
  // `npm pack` first, as publishing would: the tarball holds exactly what the package ships.
  const packDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gemma-pack-'));
  const tarball = execFileSync('npm', ['pack', path.join(REPO_ROOT, 'pkg'), '--pack-destination', packDir, '--silent'], { encoding: 'utf8' })
    .trim().split('\n').pop();
  fs.rmSync(path.join(CONSUMER_DIR, 'node_modules'), { recursive: true, force: true });
  execFileSync('npm', ['install', '--no-save', '--no-audit', '--no-fund', path.join(packDir, tarball)], { cwd: CONSUMER_DIR, stdio: 'inherit' });
  const entry = path.join(CONSUMER_DIR, 'node_modules', 'gemma-webgpu', 'gemma_webgpu.js');
  if (!fs.existsSync(entry)) throw new Error(`${path.relative(REPO_ROOT, entry)} is missing after npm install`);
  console.log(`check npm pack + npm install of pkg/ ... ok (${secs(Date.now() - t0)})`);
} catch (e) {
  console.log(`check npm pack + npm install of pkg/ ... FAILED: ${e.message}`);
  process.exit(printResult(0, 1));
}

// 2. Open the consumer page and collect its verdict.
ensureDir(OUT_DIR);
const server = await startServer();
const consoleLines = [];
let browser;
let page;
let passed = 1; // npm install
let failed = 0;
try {
  browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
  page = await browser.newPage({ viewport: VIEWPORT });
  collectConsole(page, consoleLines);
  const url = `${server.url}/tests/e2e/consumer/index.html`;
  console.log(`consumer test: ${url} on Chromium ${browser.version()}`);
  const t0 = Date.now();
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForFunction(() => window.__result, null, { timeout: RESULT_TIMEOUT, polling: 250 });
  const result = await page.evaluate(() => window.__result);
  for (const c of result.checks) {
    console.log(`check ${c.name} ... ${c.ok ? 'ok' : 'FAILED'}${c.detail ? `: ${c.detail}` : ''}`);
    if (c.ok) passed += 1;
    else failed += 1;
  }
  if (result.error) {
    console.log(`check the page ran to the end ... FAILED: ${result.error}`);
    failed += 1;
  }
  console.log(`(page finished in ${secs(Date.now() - t0)})`);
} catch (e) {
  console.log(`check the page reported a result ... FAILED: ${e?.message ?? e}`);
  failed += 1;
}
if (failed) {
  await page?.screenshot({ path: path.join(OUT_DIR, 'consumer-failure.png') }).catch(() => {});
  dumpConsole(consoleLines);
}
await browser?.close().catch(() => {});
await server.close();
process.exit(printResult(passed, failed));
