// Several tabs of one browser loading one model (tests/e2e/tabs.html in each; one origin, so one
// Cache Storage and one set of Web Locks): two tabs loading it at once share one download; a
// version a tab uses is not deleted when another tab loads a newer version of the model; an
// aborted reload of a completely cached model leaves it complete and loadable offline.
//
//   node tests/e2e/tabs.test.mjs   (needs pkg/ and the native CLI: target/debug/gemma, or
//                                   $GEMMA_BIN)
//
// The model is the tiny test checkpoint (tests/fixtures/tiny-f32, int4: one kernel family, so
// a load compiles few shaders), converted here by the CLI and split into four shards
// (target/test-data/e2e-tabs/model/), served through `/__delay/…` so that downloads take long
// enough for the two tabs to overlap; its "newer version" is the same model with its manifest
// written out differently (another SHA-256, so another cached version), swapped in on disk.

import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import {
  CHROMIUM_ARGS, CHROMIUM_PATH, REPO_ROOT, VIEWPORT, collectConsole, dumpConsole, printResult, watchdog,
} from './harness.mjs';

const GEMMA_BIN = process.env.GEMMA_BIN || path.join(REPO_ROOT, 'target', 'debug', 'gemma');
const FIXTURE = path.join(REPO_ROOT, 'tests', 'fixtures');
const WORK = path.join(REPO_ROOT, 'target', 'test-data', 'e2e-tabs');
const MODEL = path.join(WORK, 'model');
const DELAY_MS = 300; // per request: a download (manifest, tokenizer, four shards three at a time) takes > 1 s
const BASE = `/__delay/${DELAY_MS}/target/test-data/e2e-tabs/model/`;
const SHARDS = 4;

let passed = 0, failed = 0;
const check = (name, ok, detail) => {
  console.log(`check ${name} ... ${ok ? 'ok' : 'FAILED'}: ${detail}`);
  if (ok) passed++; else failed++;
};

if (!fs.existsSync(GEMMA_BIN) || !fs.existsSync(path.join(REPO_ROOT, 'pkg', 'package.json'))) {
  console.log(`missing ${GEMMA_BIN} (cargo build --bin gemma) or pkg/ (bash scripts/build-pkg.sh)`);
  process.exit(printResult(0, 1));
}

// The tiny checkpoint converted to int4, then split at tensor boundaries into SHARDS shards of
// about equal size.
function prepareModel() {
  const src = path.join(WORK, 'checkpoint');
  const SOURCE = path.join(WORK, 'converted');
  fs.rmSync(WORK, { recursive: true, force: true });
  fs.mkdirSync(src, { recursive: true });
  for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(FIXTURE, 'tiny-f32', f), path.join(src, f));
  fs.copyFileSync(path.join(FIXTURE, 'tiny-tokenizer.json'), path.join(src, 'tokenizer.json'));
  execFileSync(GEMMA_BIN, ['convert', src, SOURCE, '--quant', 'int4'], { stdio: 'ignore' });
  const manifest = JSON.parse(fs.readFileSync(path.join(SOURCE, 'manifest.json'), 'utf8'));
  if (manifest.shards.length !== 1) throw new Error(`expected one shard in ${SOURCE}, found ${manifest.shards.length}`);
  const bin = fs.readFileSync(path.join(SOURCE, manifest.shards[0].file));
  const parts = manifest.tensors.flatMap((t) => t.parts).sort((a, b) => a.offset - b.offset);
  const cuts = [0];
  for (const p of parts) {
    if (p.offset >= (bin.length / SHARDS) * cuts.length && cuts.length < SHARDS) cuts.push(p.offset);
  }
  cuts.push(bin.length);
  fs.mkdirSync(MODEL, { recursive: true });
  manifest.shards = cuts.slice(0, -1).map((begin, i) => {
    const bytes = bin.subarray(begin, cuts[i + 1]);
    const file = `model-${String(i).padStart(5, '0')}.bin`;
    fs.writeFileSync(path.join(MODEL, file), bytes);
    return { file, size: bytes.length, sha256: crypto.createHash('sha256').update(bytes).digest('hex') };
  });
  for (const p of parts) {
    const shard = cuts.findLastIndex((c, i) => i < cuts.length - 1 && c <= p.offset);
    p.offset -= cuts[shard];
    p.shard = shard;
  }
  fs.copyFileSync(path.join(SOURCE, manifest.tokenizer), path.join(MODEL, manifest.tokenizer));
  return manifest;
}

let manifest;
try {
  manifest = prepareModel();
} catch (e) {
  console.log(`check the model is prepared ... FAILED: ${e?.message ?? e}`);
  process.exit(printResult(0, 1));
}
const shardFiles = manifest.shards.map((s) => s.file);
const v1 = JSON.stringify(manifest, null, 2);
const v2 = JSON.stringify(manifest); // the same model, another manifest: a newer version
const writeManifest = (text) => fs.writeFileSync(path.join(MODEL, 'manifest.json'), text);
const cacheKey = (text) => `gemma-webgpu/${crypto.createHash('sha256').update(text).digest('hex').slice(0, 16)}`;
writeManifest(v1);

const server = await startServer();
const lines = [];
const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
// The watchdog counts every check not passed by then as failed.
watchdog(5 * 60_000, { get passed() { return passed; }, steps: { length: 6 } }, () => browser.close());
const context = await browser.newContext({ viewport: VIEWPORT });
const openTab = async () => {
  const page = await context.newPage();
  collectConsole(page, lines);
  await page.goto(`${server.url}/tests/e2e/tabs.html`);
  await page.waitForFunction(() => window.__ready, null, { timeout: 60_000 });
  return page;
};
// Requests the server has seen for `file` of the model since `since` (an index into its log).
const served = (file, since = 0) => server.log.slice(since).filter((e) => e.path === BASE + file).length;
const listed = async (page) => (await page.evaluate(() => window.listCached())).map((m) => `${m.key} complete=${m.complete}`);

try {
  const t0 = Date.now();
  const a = await openTab();
  const b = await openTab();
  await a.evaluate(() => window.clearCaches());

  // 1. Two tabs load the same model at the same time: one downloads, the other waits for it and
  // reads the files from the cache.
  const [ra, rb] = await Promise.all([a, b].map((p) => p.evaluate((url) => window.loadModel(url), BASE)));
  const counts = Object.fromEntries([manifest.tokenizer, ...shardFiles].map((f) => [f, served(f)]));
  check('two tabs at once: both load', ra.ok && rb.ok, JSON.stringify({ a: ra, b: rb }));
  check('two tabs at once: each shard and the tokenizer reach the server once',
    Object.values(counts).every((n) => n === 1), JSON.stringify(counts));
  check("two tabs at once: one of them reports 'waiting' for the other's download",
    [ra, rb].filter((r) => r.phases?.includes('waiting')).length === 1, JSON.stringify([ra.phases, rb.phases]));

  // 2. An aborted reload of the completely cached model (aborted once it reads from the cache)
  // leaves it marked complete, and it loads offline (the server answers 503 to everything).
  const aborted = await b.evaluate((url) => window.loadModel(url, { abortOn: 'cache' }), BASE);
  const afterAbort = await listed(b);
  check('an aborted reload leaves the cached model complete',
    aborted.error === 'AbortError' && afterAbort.length === 1 && afterAbort[0] === `${cacheKey(v1)} complete=true`,
    JSON.stringify({ aborted, cached: afterAbort }));
  const offline = [];
  await b.route(`**${BASE}**`, (route) => {
    offline.push(new URL(route.request().url()).pathname);
    return route.fulfill({ status: 503, body: 'offline' });
  });
  const ro = await b.evaluate((url) => window.loadModel(url), BASE);
  await b.unroute(`**${BASE}**`);
  check('then it loads offline, every shard from the cache',
    ro.ok && offline.length === 1 && offline[0].endsWith('manifest.json'), JSON.stringify({ load: ro, requests: offline }));

  // 3. A newer version of the model, loaded in tab A while tab B (and A) use the old one: the
  // cleanup after it keeps the old version, in use, and deletes an older one no tab uses (a
  // stand-in: a cache holding only the entry that lists a complete copy of the model).
  const unused = 'gemma-webgpu/00000000000000aa';
  await b.evaluate(async ({ key, url, entry }) => {
    const c = await caches.open(key);
    await c.put(new URL(url + entry, location.href).href, new Response(JSON.stringify({ url: new URL(url, location.href).href, bytes: 1, files: 1, complete: true })));
  }, { key: unused, url: BASE, entry: 'gemma-webgpu-cache.json' });
  const before = await listed(b);
  writeManifest(v2);
  const r2 = await a.evaluate((url) => window.loadModel(url), BASE);
  const after = await listed(a);
  const expected = [`${cacheKey(v1)} complete=true`, `${cacheKey(v2)} complete=true`];
  check('a newer version keeps the version another tab uses, deletes the one no tab uses',
    before.includes(`${unused} complete=true`) && r2.ok && JSON.stringify(after.sort()) === JSON.stringify(expected.sort()),
    JSON.stringify({ load: r2, before, after }));
  console.log(`(${((Date.now() - t0) / 1000).toFixed(1)} s in the browser)`);
} catch (e) {
  check('the tabs ran to the end', false, e?.stack ?? e);
}
if (failed) dumpConsole(lines);
await browser.close();
await server.close();
process.exit(printResult(passed, failed));
