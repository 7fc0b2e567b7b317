// The real Gemma 3 270M (the demo's default conversion: int4 layers, int8 embedding) in
// headless Chromium (WebGPU on SwiftShader here) against Hugging Face transformers' outputs
// for the same GGUF: tokenizer ids, greedy agreement, top-1 agreement and KL over a text
// (tests/e2e/gemma3.html does the work in the page).
//
//   node tests/e2e/gemma3.test.mjs   (needs pkg/ and www/models/default/: scripts/prepare-demo-model.sh)

import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import { CHROMIUM_ARGS, CHROMIUM_PATH, VIEWPORT, collectConsole, dumpConsole, printResult } from './harness.mjs';

// Bounds for the demo's default conversion (int4 layers, int8 embedding, fp16 KV cache), as
// tests/gemma3_270m.rs asserts natively, just under what was measured: natively greedy [5, 8, 0]
// tokens over the three prompts, 73.6% top-1 and mean KL 0.123 over the whole text. The page
// checks prompts 0 and 2 (measured here: [5, 0], as natively) and the text's first 64 tokens
// (75.0%, 0.105). The README has the measurements.
const BOUNDS = { greedyMin: [4, 0], top1Min: 0.70, klMax: 0.14 };

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
  await page.goto(`${server.url}/tests/e2e/gemma3.html`);
  await page.waitForFunction(() => window.__result, null, { timeout: 40 * 60_000, polling: 500 });
  const r = await page.evaluate(() => window.__result);
  const get = (name) => r.results.find((x) => x.name === name)?.value;
  for (const x of r.results) console.log(`  ${x.name}: ${JSON.stringify(x.value)}`);
  check('the page ran to the end', r.ok, r.error ?? 'yes');
  if (r.ok) {
    const [same, total] = get('tokenizer strings identical').split('/').map(Number);
    check('tokenizer ids identical to transformers', same === total, `${same}/${total}`);
    const agree = get('greedy tokens identical per prompt (of 32)');
    // Per prompt, so one cannot fall unnoticed (the second measured 0: its first token differs).
    const greedyOk = agree.length === BOUNDS.greedyMin.length && agree.every((n, i) => n >= BOUNDS.greedyMin[i]);
    check(`greedy agreement per prompt >= ${JSON.stringify(BOUNDS.greedyMin)} tokens`, greedyOk, JSON.stringify(agree));
    check(`top-1 agreement >= ${BOUNDS.top1Min}`, get('top-1 agreement') >= BOUNDS.top1Min, get('top-1 agreement'));
    check(`mean KL <= ${BOUNDS.klMax}`, get('mean KL') <= BOUNDS.klMax, get('mean KL'));
    check('a greedy chat reply is real English text', /[A-Za-z]{3,}/.test(get('chat reply') ?? ''), JSON.stringify(get('chat reply')));
  }
} catch (e) {
  check('the page reported a result', false, e?.message ?? e);
}
if (failed) dumpConsole(lines);
await browser.close();
await server.close();
process.exit(printResult(passed, failed));
