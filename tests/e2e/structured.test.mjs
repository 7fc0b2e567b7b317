// Structured output in Chromium (tests/e2e/structured.html): seeds of a nested JSON schema, a
// Lark grammar and a regular expression on a tiny random-weight model with Gemma 2's real
// vocabulary, every output valid. 4 seeds each in the test command (a 256k-token LM head costs
// SwiftShader about 250 ms a token); SEEDS=50 for the full run (about 12 minutes; the native
// test does 50 through the GPU model in tests/constraint.rs). Writes the model with the native
// CLI first:
//   node tests/e2e/structured.test.mjs   (needs pkg/, target/debug/gemma and
//   target/test-data/gemma-tokenizer.json: scripts/fetch-test-data.sh)

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import { CHROMIUM_ARGS, CHROMIUM_PATH, REPO_ROOT, collectConsole, dumpConsole, printResult } from './harness.mjs';

const GEMMA_BIN = process.env.GEMMA_BIN || path.join(REPO_ROOT, 'target', 'debug', 'gemma');
const MODEL = path.join(REPO_ROOT, 'target', 'e2e-structured', 'model');
const TOKENIZER = path.join(REPO_ROOT, 'target', 'test-data', 'gemma-tokenizer.json');

let passed = 0, failed = 0;
const check = (name, ok, detail) => {
  console.log(`check ${name} ... ${ok ? 'ok' : 'FAILED'}: ${detail}`);
  if (ok) passed++; else failed++;
};

fs.rmSync(MODEL, { recursive: true, force: true });
execFileSync(GEMMA_BIN, ['synth', MODEL, '--preset', path.join(REPO_ROOT, 'tests', 'fixtures', 'tiny-256k', 'config.json'),
  '--quant', 'int4', '--seed', '3', '--tokenizer', TOKENIZER, '--quiet'], { stdio: 'inherit' });

const lines = [];
const server = await startServer();
const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
try {
  const page = await browser.newPage();
  collectConsole(page, lines);
  page.on('console', (m) => console.log(`  ${m.text()}`));
  await page.goto(`${server.url}/tests/e2e/structured.html?seeds=${process.env.SEEDS || 4}`);
  await page.waitForFunction(() => window.__result, null, { timeout: 20 * 60_000, polling: 500 });
  const r = await page.evaluate(() => window.__result);
  check('the page ran to the end', r.ok, r.error ?? 'yes');
  for (const name of ['schema', 'lark', 'regex']) {
    const x = r[name];
    check(`${name}: every seed's output is valid and ended by the model`, x && x.valid === x.seeds && x.seeds === Number(process.env.SEEDS || 4), JSON.stringify(x));
  }
  if (r.failures.length) console.log(`failures: ${JSON.stringify(r.failures.slice(0, 5))}`);
  console.log(`unconstrained: ${JSON.stringify(r.unconstrained)}`);
} catch (e) {
  check('the page reported a result', false, e?.message ?? e);
}
if (failed) dumpConsole(lines);
await browser.close();
await server.close();
process.exit(printResult(passed, failed));
