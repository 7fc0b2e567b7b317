// A GGUF loaded by URL in headless Chromium (tests/e2e/gguf.html does the work in the page):
// the synthetic Gemma 2 GGUF that tests/gguf.rs writes and the real Gemma 3 270M, each equal
// logit for logit to the native conversion of the same file; a reload requests no weights; bad
// servers and files are refused by name before their weights are downloaded.
//
//   node tests/e2e/gguf.test.mjs   (needs pkg/, www/models/default/, target/test-data/e2e-gguf/
//                                   from `cargo test --test gguf`, and the 270M GGUF in
//                                   target/test-data/)

import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import { CHROMIUM_ARGS, CHROMIUM_PATH, VIEWPORT, collectConsole, dumpConsole, printResult } from './harness.mjs';

// The conversion holds one run of rows of the file at a time: at most one 32 MiB shard's part.
const MAX_RANGE = 32 << 20;
// Refused files may read the header (the synthetic file's is under 64 KiB), never the weights.
const MAX_REFUSED_BYTES = 1 << 20;

const server = await startServer();
const lines = [];
let passed = 0, failed = 0;
const check = (name, ok, detail) => {
  console.log(`check ${name} ... ${ok ? 'ok' : 'FAILED'}: ${detail}`);
  if (ok) passed++; else failed++;
};
const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
try {
  const page = await browser.newPage({ viewport: VIEWPORT });
  collectConsole(page, lines);
  await page.goto(`${server.url}/tests/e2e/gguf.html`);
  await page.waitForFunction(() => window.__result, null, { timeout: 40 * 60_000, polling: 500 });
  const r = await page.evaluate(() => window.__result);
  const get = (name) => r.results.find((x) => x.name === name)?.value;
  for (const x of r.results) console.log(`  ${x.name}: ${JSON.stringify(x.value)}`);
  check('the page ran to the end', r.ok, r.error ?? 'yes');
  if (r.ok) {
    const syn = get('synthetic: load');
    check('synthetic: read by ranges, none past a shard', syn.weightRequests > 0 && syn.largestRange <= MAX_RANGE, JSON.stringify(syn));
    check('synthetic: logits equal to the native conversion', get('synthetic: max |logit difference|, by URL vs native conversion') === 0,
      get('synthetic: max |logit difference|, by URL vs native conversion'));
    check('synthetic: a reload requests no weights', get('synthetic: reload').weightRequests === 0, JSON.stringify(get('synthetic: reload')));
    check('synthetic: the reloaded model is the same', get('synthetic: max |logit difference| after the reload') === 0, get('synthetic: max |logit difference| after the reload'));
    const refusals = [
      ['refused: a server that ignores Range', 'DownloadError', /Range/],
      ['refused: a truncated file', 'ModelFormatError', /truncated/],
      ['refused: another architecture', null, /'llama'/],
      ['refused: an unreadable tensor type', 'ModelFormatError', /Q2_K/],
    ];
    for (const [name, errName, pattern] of refusals) {
      const v = get(name);
      const ok = v?.error && (!errName || v.error === errName) && pattern.test(v.message) && v.bytesAsked <= MAX_REFUSED_BYTES;
      check(`${name}: ${errName ?? 'an error'} matching ${pattern} after at most ${MAX_REFUSED_BYTES} bytes asked`, ok, JSON.stringify(v));
    }
    const real = get('270M: load by URL');
    check(`270M: no range larger than ${MAX_RANGE} bytes held at once`, real.largestRange <= MAX_RANGE && real.weightRequests > 0, JSON.stringify(real));
    check('270M: logits equal to the native conversion of the file', get('270M: max |logit difference|, by URL vs native conversion') === 0,
      get('270M: max |logit difference|, by URL vs native conversion'));
    check("270M: greedy continuation identical to Hugging Face's", get("270M: greedy tokens identical to HF's (of 32)") === 32, get("270M: greedy tokens identical to HF's (of 32)"));
    check('270M: a reload requests no weights', get('270M: reload').weightRequests === 0, JSON.stringify(get('270M: reload')));
  }
} catch (e) {
  check('the page reported a result', false, e?.message ?? e);
}
if (failed) dumpConsole(lines);
await browser.close();
await server.close();
process.exit(printResult(passed, failed));
