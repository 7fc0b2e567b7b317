// Our engine in headless Chromium (SwiftShader here), timed the way ../shared/bench/webllm/
// times WebLLM, so the two can be run one after the other on the same adapter. Not a test: a
// benchmark, run by hand (about 10 minutes for the 2B on 2 cores; run nothing else meanwhile).
//
//   bash scripts/build-pkg.sh                       # pkg/ (release)
//   target/release/gemma synth target/bench-2b --preset 2b --quant int4 --tokenizer <tokenizer.json>
//
//   node tests/e2e/bench.mjs --model target/bench-2b [--reps 2] [--max-tokens 8] [--prompt-words 26] [--out FILE]
//
// For WebLLM's prompt tokens, give synth the WordLevel tokenizer that
// ../shared/bench/webllm/gen_model.py writes (tests/e2e/README.md). The model directory is
// served from the repository; results (JSON) go to --out
// (default target/bench/chromium-<date>.json) and a summary to stdout. GPU memory is what the
// page asked WebGPU for (createBuffer sizes, less destroyed buffers), as the WebLLM harness
// counts it.

import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { execSync } from 'node:child_process';
import { chromium } from 'playwright-core';
import { startServer, REPO_ROOT } from './server.mjs';
import { CHROMIUM_PATH, CHROMIUM_ARGS } from './harness.mjs';

const argv = process.argv.slice(2);
const arg = (k, d) => { const i = argv.indexOf(k); return i >= 0 ? argv[i + 1] : d; };
const model = arg('--model');
if (!model) {
  console.error('usage: node tests/e2e/bench.mjs --model <model dir inside the repository> [--reps 2] [--max-tokens 8] [--prompt-words 26] [--out FILE]');
  process.exit(2);
}
const modelPath = '/' + path.relative(REPO_ROOT, path.resolve(model)).split(path.sep).join('/') + '/';
if (modelPath.startsWith('/..')) {
  console.error(`${model} is outside the repository; the bench serves the repository only`);
  process.exit(2);
}
const out = arg('--out', path.join(REPO_ROOT, 'target', 'bench', `chromium-${new Date().toISOString().slice(0, 10)}.json`));
const params = new URLSearchParams({ model: modelPath, reps: arg('--reps', '2'), maxTokens: arg('--max-tokens', '8'), promptWords: arg('--prompt-words', '26') });

const server = await startServer();
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'gemma-bench-'));
const browser = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
await browser.addInitScript(() => {
  // Bytes of live GPUBuffers (created, not destroyed) and their peak.
  const m = (window.__gpuMem = { live: 0, peak: 0, buffers: 0 });
  const size = new WeakMap();
  const create = GPUDevice.prototype.createBuffer;
  GPUDevice.prototype.createBuffer = function (d) {
    const b = create.call(this, d);
    size.set(b, d.size);
    m.live += d.size; m.buffers++; m.peak = Math.max(m.peak, m.live);
    return b;
  };
  const destroy = GPUBuffer.prototype.destroy;
  GPUBuffer.prototype.destroy = function () {
    const s = size.get(this);
    if (s !== undefined) { m.live -= s; m.buffers--; size.delete(this); }
    return destroy.call(this);
  };
});
const page = browser.pages()[0] ?? (await browser.newPage());
page.on('console', (msg) => { if (msg.text().startsWith('[bench]')) console.log(msg.text()); });
page.on('pageerror', (e) => console.log('pageerror:', e.message));
const t0 = Date.now();
await page.goto(`${server.url}/tests/e2e/bench.html?${params}`);
await page.waitForFunction(() => window.__bench !== undefined, null, { timeout: 0, polling: 1000 });
const result = await page.evaluate(() => window.__bench);
const summary = {
  date: new Date().toISOString(),
  chromium: execSync(`${CHROMIUM_PATH} --version 2>/dev/null`).toString().trim(),
  model: modelPath, totalSeconds: (Date.now() - t0) / 1000, ...result,
};
fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out, JSON.stringify(summary, null, 1));
const f = (x, d = 3) => (typeof x === 'number' ? x.toFixed(d) : '-');
console.log(`${summary.chromium}; adapter: ${summary.adapter ?? '?'}`);
for (const l of summary.loads ?? []) console.log(`load ${l.label}: ${f(l.seconds, 1)} s`);
for (const r of summary.runs ?? []) {
  console.log(`rep ${r.rep}: prompt ${r.promptTokens} tok, prefill ${f(r.prefillSeconds, 2)} s = ${f(r.prefillTokPerS)} tok/s | decode ${r.newTokens - 1} steps ${f(r.decodeSeconds, 2)} s = ${f(r.decodeTokPerS, 4)} tok/s | ${r.finishReason}`);
}
if (summary.gpuMem) console.log(`GPU buffers: peak ${f(summary.gpuMem.peak / 2 ** 20, 0)} MiB`);
if (summary.error) console.log('ERROR:', summary.error);
console.log('wrote', out);
await browser.close();
await server.close();
fs.rmSync(profile, { recursive: true, force: true });
process.exit(summary.error ? 1 : 0);
