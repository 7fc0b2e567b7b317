// The npm package through bundlers, as a new user would take it: `npm pack` of pkg/, installed
// into a fresh app (tests/e2e/bundlers/app: a page and a module that imports 'gemma-webgpu'
// and calls a plain init()), then that app in headless Chromium as
//
//   1. Vite 8's dev server, with no configuration (its dependency optimizer rewrites the
//      package's `new URL('gemma_webgpu_bg.wasm', import.meta.url)` to the package's file);
//   2. Vite 8's production build (the .wasm becomes an asset), served statically;
//   3. Vite 6's dev server with the one line the README gives for Vite 7 and older:
//      `optimizeDeps: { exclude: ['gemma-webgpu'] }` (without it the pre-bundled module asks for
//      node_modules/.vite/deps/gemma_webgpu_bg.wasm, which is not there, and gets the page's HTML);
//   4. Vite 6's dev server without it, the app handing init() the .wasm's URL from
//      `import wasmUrl from 'gemma-webgpu/gemma_webgpu_bg.wasm?url'` (bundlers/app/wasm-url.js);
//   5. webpack 5's production build, with no configuration but the entry, served statically.
//
// Each page checks init() and Gemma.listCachedModels(), main.js also a named error; 1, 2 and 5
// also load the tiny test model (tests/fixtures/tiny-f32, converted to int4 by the CLI) and
// generate, stream, tokenize and dispose, and must give the same text. The .wasm must reach the
// page as application/wasm, and the builds must emit it unchanged; the builds' JS and wasm sizes
// are printed (`size …` lines).
//
//   node tests/e2e/bundlers.test.mjs   (after `npm ci` in tests/e2e; needs pkg/ and the native
//                                       CLI: target/debug/gemma, or $GEMMA_BIN)

import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import {
  CHROMIUM_ARGS, CHROMIUM_PATH, OUT_DIR, REPO_ROOT, VIEWPORT,
  collectConsole, dumpConsole, ensureDir, printResult, secs, watchdog,
} from './harness.mjs';

const GEMMA_BIN = process.env.GEMMA_BIN || path.join(REPO_ROOT, 'target', 'debug', 'gemma');
const PKG = path.join(REPO_ROOT, 'pkg');
const APP_SRC = path.join(REPO_ROOT, 'tests', 'e2e', 'bundlers', 'app');
const WORK = path.join(REPO_ROOT, 'target', 'e2e-bundlers');
const APP = path.join(WORK, 'app'); // the app's sources, with the package installed
const PUBLIC = path.join(WORK, 'public'); // served beside each page: model/
const PAGE_TIMEOUT = 4 * 60_000; // a tiny model's load is about 10 s on SwiftShader

let passed = 0, failed = 0;
const check = (name, ok, detail = '') => {
  console.log(`check ${name} ... ${ok ? 'ok' : 'FAILED'}${detail ? `: ${detail}` : ''}`);
  if (ok) passed++; else failed++;
  return ok;
};

const missing = [
  [path.join(PKG, 'package.json'), 'build the package: bash scripts/build-pkg.sh'],
  [GEMMA_BIN, 'build the CLI: cargo build --bin gemma (or set GEMMA_BIN)'],
  [CHROMIUM_PATH, 'install Chromium (scripts/setup.sh), or set CHROMIUM=/path/to/chromium'],
].filter(([file]) => !fs.existsSync(file));
if (missing.length) {
  for (const [file, fix] of missing) console.log(`missing ${path.relative(REPO_ROOT, file) || file}: ${fix}`);
  process.exit(printResult(0, 1));
}

// The bundlers, pinned in package.json (devDependencies): a missing one is a failed check, not a
// crash without a result line.
let vite, vite6, webpack;
try {
  [vite, vite6, webpack] = await Promise.all([import('vite'), import('vite6'), import('webpack').then((m) => m.default)]);
  console.log(`bundlers: vite ${vite.version}, vite ${vite6.version} (as vite6), webpack ${webpack.version}`);
} catch (e) {
  console.log(`check the bundlers are installed ... FAILED: ${e.message} (npm ci in tests/e2e)`);
  process.exit(printResult(0, 1));
}

const browserRef = {};
// Eleven minutes would mean something hangs; the checks not passed by then count as failed.
watchdog(11 * 60_000, { get passed() { return passed; }, get steps() { return { length: passed + failed + 1 }; } },
  () => browserRef.browser?.close());

const t0 = Date.now();
const kib = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(2)} MiB` : `${(n / 1024).toFixed(1)} KiB`);
const sha256 = (file) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer();
  s.once('error', reject);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

// 1. The app: the packed tarball installed into a fresh project, and the tiny model.
try {
  const t = Date.now();
  fs.rmSync(WORK, { recursive: true, force: true });
  fs.mkdirSync(APP, { recursive: true });
  const tarball = execFileSync('npm', ['pack', PKG, '--pack-destination', WORK, '--silent'], { encoding: 'utf8' })
    .trim().split('\n').pop();
  for (const f of fs.readdirSync(APP_SRC)) fs.copyFileSync(path.join(APP_SRC, f), path.join(APP, f));
  fs.writeFileSync(path.join(APP, 'package.json'),
    `${JSON.stringify({ name: 'gemma-webgpu-bundler-app', private: true, type: 'module' }, null, 2)}\n`);
  const npmInstall = ['install', '--no-save', '--no-package-lock', '--no-audit', '--no-fund', '--loglevel=error'];
  execFileSync('npm', [...npmInstall, path.join(WORK, tarball)], { cwd: APP, stdio: 'inherit' });
  const installed = JSON.parse(fs.readFileSync(path.join(APP, 'node_modules', 'gemma-webgpu', 'package.json'), 'utf8'));
  check('npm pack + npm install of pkg/ into a fresh app', installed.exports?.['.'],
    `${tarball}, exports ${JSON.stringify(Object.keys(installed.exports ?? {}))} (${secs(Date.now() - t)})`);

  const src = path.join(WORK, 'checkpoint');
  fs.mkdirSync(src);
  const fixtures = path.join(REPO_ROOT, 'tests', 'fixtures');
  for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(fixtures, 'tiny-f32', f), path.join(src, f));
  fs.copyFileSync(path.join(fixtures, 'tiny-tokenizer.json'), path.join(src, 'tokenizer.json'));
  execFileSync(GEMMA_BIN, ['convert', src, path.join(PUBLIC, 'model'), '--quant', 'int4'], { stdio: 'ignore' });
} catch (e) {
  check('the app and the model are prepared', false, e.message);
  process.exit(printResult(passed, failed));
}

const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
browserRef.browser = browser;
console.log(`bundlers test: Chromium ${browser.version()}`);
ensureDir(OUT_DIR);

const texts = []; // [label, generated text] of the pages that loaded the model

// Opens `url` in a fresh profile, waits for the app's verdict and counts its checks, plus one of
// our own: the .wasm reached the page once, as application/wasm.
async function runPage(label, url) {
  const context = await browser.newContext({ viewport: VIEWPORT });
  const page = await context.newPage();
  const lines = [];
  collectConsole(page, lines);
  const wasm = [];
  page.on('response', (res) => {
    const { pathname } = new URL(res.url());
    // (Vite's `?url` import of the .wasm is a script request: not the file.)
    if (!pathname.endsWith('.wasm') || res.request().resourceType() === 'script') return;
    wasm.push({ path: pathname, status: res.status(), type: res.headers()['content-type'] ?? '' });
  });
  const before = failed;
  const t = Date.now();
  try {
    await page.goto(url, { waitUntil: 'load' });
    await page.waitForFunction(() => window.__result, null, { timeout: PAGE_TIMEOUT, polling: 250 });
    const result = await page.evaluate(() => window.__result);
    for (const c of result.checks) check(`${label}: ${c.name}`, c.ok, c.detail);
    if (result.error) check(`${label}: the page ran to the end`, false, result.error);
    if (typeof result.text === 'string') texts.push([label, result.text]);
    check(`${label}: the .wasm is fetched once, as application/wasm`,
      wasm.length === 1 && wasm[0].status === 200 && wasm[0].type.startsWith('application/wasm'),
      wasm.map((w) => `${w.path} ${w.status} ${w.type}`).join('; ') || 'not fetched');
  } catch (e) {
    check(`${label}: the page reported a result`, false, e?.message ?? e);
  }
  console.log(`(${label}: page finished in ${secs(Date.now() - t)})`);
  if (failed > before) {
    const shot = path.join(OUT_DIR, `bundlers-${label.replace(/[^a-z0-9]+/gi, '-')}-failure.png`);
    await page.screenshot({ path: shot }).catch(() => {});
    dumpConsole(lines);
  }
  await context.close();
}

// The JS and wasm a build emitted (not the model copied beside it), printed; checks that the
// .wasm is the package's, byte for byte.
function reportBuild(label, dir) {
  const files = [];
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory() && p !== path.join(dir, 'model')) walk(p);
      else if (e.isFile() && /\.(m?js|wasm)$/.test(e.name)) files.push(p);
    }
  };
  walk(dir);
  const total = { js: [0, 0], wasm: [0, 0] };
  for (const f of files.sort()) {
    const bytes = fs.statSync(f).size;
    const gz = zlib.gzipSync(fs.readFileSync(f), { level: 9 }).length;
    const kind = f.endsWith('.wasm') ? 'wasm' : 'js';
    total[kind][0] += bytes;
    total[kind][1] += gz;
    console.log(`  size ${label}: ${path.relative(dir, f)} ${bytes} bytes (${kib(bytes)}, ${kib(gz)} gzipped)`);
  }
  console.log(`size ${label}: JS ${kib(total.js[0])} (${kib(total.js[1])} gzipped), wasm ${kib(total.wasm[0])} (${kib(total.wasm[1])} gzipped)`);
  const wasms = files.filter((f) => f.endsWith('.wasm'));
  const want = sha256(path.join(PKG, 'gemma_webgpu_bg.wasm'));
  check(`${label}: emits the package's .wasm unchanged, as one asset`, wasms.length === 1 && sha256(wasms[0]) === want,
    wasms.map((f) => path.relative(dir, f)).join(', ') || 'none');
}

// A step: runs fn, counting a throw as a failed check (the bundler's own error).
async function step(label, fn) {
  const t = Date.now();
  try {
    await fn();
  } catch (e) {
    check(`${label}`, false, (e?.message ?? String(e)).split('\n').slice(0, 20).join('\n'));
  }
  console.log(`(${label}: ${secs(Date.now() - t)} in all)`);
}

// Vite: the dev server, given `config` on top of what every run needs (root, port, the model
// beside the page, a cache of its own per version).
async function viteDev(label, api, config, query) {
  const port = await freePort();
  const server = await api.createServer({
    configFile: false,
    root: APP,
    publicDir: PUBLIC,
    cacheDir: path.join(APP, 'node_modules', `.vite-${label.replace(/[^a-z0-9.]+/gi, '-')}`),
    logLevel: 'warn',
    clearScreen: false,
    server: { host: '127.0.0.1', port, strictPort: true },
    ...config,
  });
  try {
    await server.listen();
    await runPage(label, `http://127.0.0.1:${port}/${query}`);
  } finally {
    await server.close();
  }
}

async function serveStatic(label, dir, query) {
  const server = await startServer({ root: dir });
  try {
    await runPage(label, `${server.url}/${query}`);
  } finally {
    await server.close();
  }
}

try {
  await step(`vite ${vite.version} dev server (no configuration)`, () =>
    viteDev(`vite ${vite.version} dev`, vite, {}, ''));

  await step(`vite ${vite.version} build`, async () => {
    const label = `vite ${vite.version} build`;
    const outDir = path.join(WORK, 'dist-vite');
    const t = Date.now();
    await vite.build({
      configFile: false, root: APP, publicDir: PUBLIC, logLevel: 'warn', clearScreen: false, build: { outDir, emptyOutDir: true },
    });
    console.log(`(${label}: built in ${secs(Date.now() - t)})`);
    reportBuild(label, outDir);
    await serveStatic(label, outDir, '');
  });

  await step(`vite ${vite6.version} dev server (optimizeDeps.exclude)`, () =>
    viteDev(`vite ${vite6.version} dev + exclude`, vite6, { optimizeDeps: { exclude: ['gemma-webgpu'] } }, '?model=0'));

  await step(`vite ${vite6.version} dev server (no configuration; init() given the .wasm's URL)`, () =>
    viteDev(`vite ${vite6.version} dev + wasm ?url`, vite6, {}, 'wasm-url.html'));

  await step(`webpack ${webpack.version} build`, async () => {
    const label = `webpack ${webpack.version} build`;
    const outDir = path.join(WORK, 'dist-webpack');
    const t = Date.now();
    const compiler = webpack({ mode: 'production', context: APP, entry: './main.js', output: { path: outDir, clean: true } });
    const stats = await new Promise((resolve, reject) => compiler.run((err, s) => (err ? reject(err) : resolve(s))));
    await new Promise((resolve) => compiler.close(resolve));
    const info = stats.toJson({ all: false, errors: true, warnings: true });
    if (stats.hasErrors()) throw new Error(info.errors.map((e) => e.message).join('\n'));
    // Its warnings are its size advice (the .wasm is over its 244 KiB): printed, not failed.
    const warnings = info.warnings.map((w) => w.message.split('\n')[0].trim()).join(' / ');
    console.log(`(${label}: built in ${secs(Date.now() - t)}; ${info.warnings.length} warnings: ${warnings})`);
    reportBuild(label, outDir);
    // The page around the bundle (an app would use html-webpack-plugin), and the model beside it.
    const viteScript = '<script type="module" src="./main.js"></script>';
    const page = fs.readFileSync(path.join(APP, 'index.html'), 'utf8');
    if (!page.includes(viteScript)) throw new Error(`bundlers/app/index.html no longer holds ${viteScript}`);
    fs.writeFileSync(path.join(outDir, 'index.html'), page.replace(viteScript, '<script defer src="main.js"></script>'));
    fs.cpSync(path.join(PUBLIC, 'model'), path.join(outDir, 'model'), { recursive: true });
    await serveStatic(label, outDir, '');
  });

  check('every page that loaded the model generated the same text (same seed)',
    texts.length === 3 && texts.every(([, t]) => t === texts[0][1]),
    texts.map(([l, t]) => `${l}: ${JSON.stringify(t)}`).join('; '));
} finally {
  await browser.close().catch(() => {});
}
console.log(`(bundlers test: ${secs(Date.now() - t0)} in all)`);
process.exit(printResult(passed, failed));
