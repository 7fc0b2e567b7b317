// End-to-end test of the demo page (www/) in headless Chromium: load the default model, chat
// with streaming, stop a generation, reload from the browser cache, and recover from a
// corrupted cached shard. One persistent browser profile for the whole run, so the Cache API
// survives page reloads.
//
//   node tests/e2e/demo.test.mjs        (after `npm ci` in tests/e2e)
//
// Needs pkg/ (bash scripts/build-pkg.sh) and a model in www/models/default/. The GPU may be
// SwiftShader on a small CPU, so the timeouts are generous.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import {
  CHROMIUM_ARGS, CHROMIUM_PATH, MODEL_DIR, OUT_DIR, REPO_ROOT, VIEWPORT,
  Steps, assert, collectConsole, dumpConsole, ensureDir, printResult, watchdog,
} from './harness.mjs';

// Timeouts from what SwiftShader measured here (2-core AMD EPYC, 2026-11): a first load 20 s,
// decode 2.2-2.3 s per token, prefill 1-2.5 tok/s. Stop is honoured between two decode steps,
// so it takes at most about one token (measured 2.6 s from the click to 'ready'): 15 s is six
// tokens. A load or a whole short reply (30-60 s here) gets 15 minutes, for slower hosts.
const LOAD_TIMEOUT = 15 * 60_000;
const GENERATE_TIMEOUT = 15 * 60_000;
const STOP_TIMEOUT = 15_000;
const TOTAL_TIMEOUT = 90 * 60_000;

const MODEL_URL_PATH = '/www/models/default/';
const STEP_COUNT = 6;

// ---------------------------------------------------------------------------------------------
// Preconditions: the package and the model must exist.

const manifestPath = path.join(MODEL_DIR, 'manifest.json');
const missing = [
  [path.join(REPO_ROOT, 'pkg', 'gemma_webgpu.js'), 'build the package: bash scripts/build-pkg.sh'],
  [manifestPath, 'prepare the default model in www/models/default/ (see the README)'],
  [CHROMIUM_PATH, 'install Chromium (scripts/setup.sh), or set CHROMIUM=/path/to/chromium'],
].filter(([file]) => !fs.existsSync(file));
if (missing.length) {
  for (const [file, fix] of missing) console.log(`missing ${path.relative(REPO_ROOT, file) || file}: ${fix}`);
  process.exit(printResult(0, STEP_COUNT));
}

const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
/** The greedy completion both backends must give (see its "about"). */
const COMPLETION_FILE = 'tests/fixtures/gemma3-270m/demo-completion.json';
const COMPLETION = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, COMPLETION_FILE), 'utf8'));
/** Shard file name -> its manifest entry ({ file, size, sha256 }). */
const shards = new Map(manifest.shards.map((s) => [s.file, s]));

// ---------------------------------------------------------------------------------------------
// Setup.

ensureDir(OUT_DIR);
const server = await startServer();
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gemma-e2e-profile-'));
const consoleLines = [];
let context;
let page;

const steps = new Steps();
watchdog(TOTAL_TIMEOUT, steps, () => page?.screenshot({ path: path.join(OUT_DIR, 'failure.png') }));

/** GET requests for model shards among server.log entries from index `since` on. */
function shardRequests(since) {
  return server.log
    .slice(since)
    .filter((e) => e.method === 'GET' && e.path.startsWith(MODEL_URL_PATH) && shards.has(path.posix.basename(e.path)))
    .map((e) => path.posix.basename(e.path));
}

const state = () => page.evaluate(() => document.body.dataset.state);

async function waitForState(states, timeout) {
  await page.waitForFunction((s) => s.includes(document.body.dataset.state), states, { timeout, polling: 100 });
  return state();
}

/** The text of the #error area, '' when it is hidden or empty. */
const errorText = () =>
  page.$eval('#error', (e) => (e.hidden || getComputedStyle(e).display === 'none' ? '' : e.textContent.trim()));

async function assertNoError(when) {
  const text = await errorText();
  assert(text === '', `an error is shown ${when}: ${text}`);
}

/** Open the page and press Load; resolves when the state is 'ready', throws on 'error'. */
async function openAndLoad({ reload = false } = {}) {
  if (reload) await page.reload({ waitUntil: 'load' });
  else await page.goto(`${server.url}/www/`, { waitUntil: 'load' });
  await installObserver();
  assert((await state()) === 'idle', `the fresh page's state is '${await state()}', not 'idle'`);
  const urlField = await page.inputValue('#model-url');
  assert(urlField === 'models/default/', `#model-url is prefilled with '${urlField}', not 'models/default/'`);
  // The model list (www/models.json): the local default picked, the public GGUFs listed with
  // their facts, and picking one fills in its URL.
  await page.waitForFunction(() => document.querySelectorAll('#model-pick option').length > 1, null, { timeout: 10_000 });
  const options = await page.$$eval('#model-pick option', (os) => os.map((o) => o.value));
  assert(options.filter((v) => v.endsWith('.gguf')).length >= 3 && (await page.inputValue('#model-pick')) === 'models/default/',
    `the model list is ${JSON.stringify(options)}, picked '${await page.inputValue('#model-pick')}'`);
  const gguf = options.find((v) => v.includes('gemma-2-2b-it'));
  await page.selectOption('#model-pick', gguf);
  const facts = await page.textContent('#model-facts');
  assert((await page.inputValue('#model-url')) === gguf && /GGUF by URL/.test(facts) && /context 8,192/.test(facts), `picking ${gguf} gave URL '${await page.inputValue('#model-url')}' and facts '${facts}'`);
  await page.selectOption('#model-pick', 'models/default/');
  await page.selectOption('#mode', 'chat');
  await page.click('#load');
  const s = await waitForState(['ready', 'error'], LOAD_TIMEOUT);
  if (s !== 'ready') throw new Error(`loading ended in state '${s}': ${await errorText()}`);
  const [value, max] = await page.$eval('#progress', (p) => [p.value, p.max]);
  assert(max > 0 && value === max, `the progress bar ended at ${value} of ${max}`);
  await assertNoError('after loading');
}

/**
 * Counts changes of the newest assistant bubble's text (window.__e2e.updates) and whether text
 * appeared while the reply was still being generated (window.__e2e.streamedBeforeDone).
 */
async function installObserver() {
  await page.evaluate(() => {
    const e2e = (window.__e2e = { updates: 0, streamedBeforeDone: false, lastLength: 0 });
    new MutationObserver(() => {
      const bubbles = document.querySelectorAll('#messages .msg.assistant');
      const bubble = bubbles[bubbles.length - 1];
      if (!bubble) return;
      const length = bubble.textContent.length;
      if (length === e2e.lastLength) return;
      e2e.lastLength = length;
      if (length === 0) return; // a new, empty bubble
      e2e.updates += 1;
      if (bubble.dataset.done !== 'true' && document.body.dataset.state === 'generating') {
        e2e.streamedBeforeDone = true;
      }
    }).observe(document.getElementById('messages'), { childList: true, subtree: true, characterData: true });
  });
}

async function resetObserver() {
  await page.evaluate(() => Object.assign(window.__e2e, { updates: 0, streamedBeforeDone: false }));
}

/** The newest assistant bubble: { count, text, done, stopped, failed }. */
const lastReply = () =>
  page.evaluate(() => {
    const bubbles = document.querySelectorAll('#messages .msg.assistant');
    const b = bubbles[bubbles.length - 1];
    return {
      count: bubbles.length,
      text: b ? b.textContent : '',
      done: b?.dataset.done === 'true',
      stopped: b?.dataset.stopped === 'true',
      failed: b?.dataset.failed === 'true',
    };
  });

/** Types `text` and sends it (click on #send, or Enter in the textarea); waits until it is under way. */
async function send(text, { maxTokens, viaEnter = false }) {
  assert((await state()) === 'ready', `cannot send: the state is '${await state()}', not 'ready'`);
  await page.fill('#max-tokens', String(maxTokens));
  await page.fill('#seed', '1234');
  const before = (await lastReply()).count;
  await page.fill('#prompt', text);
  if (viaEnter) await page.press('#prompt', 'Enter');
  else await page.click('#send');
  await page.waitForFunction(
    (n) => document.querySelectorAll('#messages .msg.assistant').length > n,
    before,
    { timeout: 10_000 },
  );
  const users = await page.$$eval('#messages .msg.user', (els) => els.map((e) => e.textContent));
  assert(users.at(-1) === text, `the newest user message reads ${JSON.stringify(users.at(-1))}`);
}

async function waitForReplyDone(timeout = GENERATE_TIMEOUT) {
  await page.waitForFunction(
    () => {
      const bubbles = document.querySelectorAll('#messages .msg.assistant');
      return bubbles[bubbles.length - 1]?.dataset.done === 'true';
    },
    null,
    { timeout, polling: 100 },
  );
  return lastReply();
}

// ---------------------------------------------------------------------------------------------
// Steps.

steps.add('load the default model (progress reaches its end, each shard fetched once)', async () => {
  const since = server.log.length;
  const t0 = Date.now();
  await openAndLoad();
  const requested = shardRequests(since);
  const counts = new Map([...shards.keys()].map((f) => [f, 0]));
  for (const f of requested) counts.set(f, counts.get(f) + 1);
  const wrong = [...counts].filter(([, n]) => n !== 1);
  assert(
    wrong.length === 0,
    `each shard should be requested exactly once; got ${wrong.map(([f, n]) => `${f}: ${n}`).join(', ')}`,
  );
  return `${shards.size} shards, ${((Date.now() - t0) / 1000).toFixed(1)} s`;
});

/** Waits until the newest assistant bubble shows text (or is already done). */
const firstText = () =>
  page.waitForFunction(
    () => {
      const bubbles = document.querySelectorAll('#messages .msg.assistant');
      const b = bubbles[bubbles.length - 1];
      return b && (b.textContent.length > 0 || b.dataset.done === 'true');
    },
    null,
    { timeout: GENERATE_TIMEOUT, polling: 50 },
  );

steps.add('chat: the reply streams into the assistant bubble, then completes', async () => {
  await resetObserver();
  await send('Hello! Who are you?', { maxTokens: 12 });
  // Text must show up before the reply is done.
  await firstText();
  const reply = await waitForReplyDone();
  const seen = await page.evaluate(() => ({ ...window.__e2e }));
  assert(reply.text.length > 0, 'the reply is empty');
  assert(!reply.failed, 'the reply is marked failed');
  assert(
    seen.streamedBeforeDone || seen.updates > 1,
    `the reply did not stream (text updates: ${seen.updates}, text before done: ${seen.streamedBeforeDone})`,
  );
  await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 10_000 });
  await assertNoError('after the reply');
  const tps = await page.textContent('#tps');
  await page.screenshot({ path: path.join(OUT_DIR, 'demo-reply.png') });
  return `${seen.updates} text updates, ${JSON.stringify(reply.text.slice(0, 60))}${reply.text.length > 60 ? '…' : ''}; ${tps}`;
});

steps.add('complete mode: at temperature 0 the page continues a sentence as the native engine does', async () => {
  // The default model is Gemma 3 270M *pretrained*: it completes text better than it chats.
  await page.selectOption('#mode', 'complete');
  await page.fill('#temperature', '0');
  await send(COMPLETION.prompt, { maxTokens: COMPLETION.max_tokens });
  const reply = await waitForReplyDone();
  await waitForState(['ready'], 10_000);
  await assertNoError('after the completion');
  assert(!reply.failed && reply.text.length > 0, 'the completion is empty or failed');
  // Greedy, so deterministic: the same text as the native engine gives for the same model
  // (tests/gemma3_270m.rs asserts the same fixture on lavapipe).
  assert(reply.text === COMPLETION.text,
    `the completion ${JSON.stringify(reply.text)} differs from the native engine's ${JSON.stringify(COMPLETION.text)} (${COMPLETION_FILE})`);
  const tps = await page.textContent('#tps');
  await page.screenshot({ path: path.join(OUT_DIR, 'demo-complete.png') });
  await page.selectOption('#mode', 'chat');
  await page.fill('#temperature', '0.7');
  return `${JSON.stringify(reply.text)}; ${tps}`;
});

steps.add('stop: a long generation stops promptly, and the engine still answers afterwards', async () => {
  await send('Write a long story about a lighthouse keeper and a storm.', { maxTokens: 400 });
  await firstText();
  const early = await lastReply();
  assert(!early.done, 'the reply finished before Stop could be pressed');
  assert(await page.isEnabled('#stop'), '#stop is not enabled while generating');
  const t0 = Date.now();
  await page.click('#stop', { timeout: 5_000 });
  try {
    await waitForState(['ready'], STOP_TIMEOUT);
  } catch {
    throw new Error(`the state is still '${await state()}' ${STOP_TIMEOUT / 1000} s after pressing Stop`);
  }
  const stopMs = Date.now() - t0;
  const stopped = await lastReply();
  assert(stopped.done, 'the stopped reply is not marked data-done="true"');
  assert(stopped.stopped, 'the reply is not marked as stopped (data-stopped="true")');
  assert(!stopped.failed, 'the stopped reply is marked failed');
  assert(!(await page.isEnabled('#stop')), '#stop is still enabled after stopping');
  await assertNoError('after Stop');

  await send('Thanks. Now say goodbye in one short sentence.', { maxTokens: 8, viaEnter: true });
  const after = await waitForReplyDone();
  assert(after.text.length > 0, 'the reply after a stopped one is empty');
  assert(!after.failed && !after.stopped, 'the reply after a stopped one is marked failed or stopped');
  await waitForState(['ready'], 10_000);
  await assertNoError('after the reply that followed Stop');
  return `stopped in ${(stopMs / 1000).toFixed(1)} s after ${stopped.text.length} chars; then ${JSON.stringify(after.text.slice(0, 40))}`;
});

steps.add('reload: the model loads from the browser cache, no shard downloaded again', async () => {
  const since = server.log.length;
  await openAndLoad({ reload: true });
  const requested = shardRequests(since);
  assert(requested.length === 0, `shards were downloaded again: ${requested.join(', ')}`);
  // The cached-models list shows the model (it is refreshed after a load).
  await page.waitForSelector('#cached li[data-key]', { timeout: 30_000 });
  const cached = await page.$$eval('#cached li[data-key]', (lis) =>
    lis.map((li) => `${li.querySelector('.cached-url')?.textContent} (${li.querySelector('.cached-meta')?.textContent})`),
  );
  return `cached: ${cached.join(' | ')}`;
});

steps.add('a corrupted cached shard is detected and fetched again', async () => {
  // Overwrite one cached shard with garbage of the same length (headers kept as they were).
  const shard = [...shards.values()][Math.floor(shards.size / 2)];
  const shardUrl = `${server.url}${MODEL_URL_PATH}${shard.file}`;
  const corrupted = await page.evaluate(async (url) => {
    for (const name of await caches.keys()) {
      if (!name.startsWith('gemma-webgpu/')) continue;
      const cache = await caches.open(name);
      const old = await cache.match(url);
      if (!old) continue;
      const length = (await old.arrayBuffer()).byteLength;
      const garbage = new Uint8Array(length);
      for (let i = 0; i < length; i++) garbage[i] = (i * 131 + 7) & 0xff;
      await cache.put(url, new Response(garbage, { status: 200, headers: old.headers }));
      return { name, length };
    }
    return null;
  }, shardUrl);
  assert(corrupted, `no 'gemma-webgpu/' cache holds ${shardUrl}`);

  const since = server.log.length;
  await openAndLoad({ reload: true });
  const requested = shardRequests(since);
  assert(
    requested.length === 1 && requested[0] === shard.file,
    `expected exactly one shard request (${shard.file}); got [${requested.join(', ')}]`,
  );
  // The good copy is cached again: its SHA-256 matches the manifest.
  let digest = null;
  for (let i = 0; i < 50 && digest !== shard.sha256; i++) {
    if (i) await page.waitForTimeout(200);
    digest = await page.evaluate(
      async ({ url, name }) => {
        const res = await (await caches.open(name)).match(url);
        if (!res) return null;
        const hash = await crypto.subtle.digest('SHA-256', await res.arrayBuffer());
        return [...new Uint8Array(hash)].map((b) => b.toString(16).padStart(2, '0')).join('');
      },
      { url: shardUrl, name: corrupted.name },
    );
  }
  assert(digest === shard.sha256, `the cached ${shard.file} was not repaired (sha256 ${digest}, want ${shard.sha256})`);
  return `${shard.file} (${corrupted.length} bytes) re-fetched and re-cached`;
});

// ---------------------------------------------------------------------------------------------
// Run.

let code = 1;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: VIEWPORT,
  });
  page = context.pages()[0] ?? (await context.newPage());
  collectConsole(page, consoleLines);
  page.setDefaultTimeout(60_000);
  console.log(`demo test: ${server.url}/www/ on ${CHROMIUM_PATH} (${context.browser()?.version() ?? 'persistent context'})`);
  steps.onFirstFailure = async () => {
    await page.screenshot({ path: path.join(OUT_DIR, 'failure.png') });
    console.log(`  screenshot: ${path.relative(REPO_ROOT, path.join(OUT_DIR, 'failure.png'))}`);
  };
  await steps.run();
  if (steps.failed) dumpConsole(consoleLines);
  code = steps.report();
} catch (e) {
  console.log(`the test could not run: ${e?.stack ?? e}`);
  dumpConsole(consoleLines);
  code = printResult(steps.passed, STEP_COUNT - steps.passed);
} finally {
  await context?.close().catch(() => {});
  await server.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(code);
