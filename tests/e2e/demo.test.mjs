// End-to-end test of the demo page (www/) in headless Chromium: the page suits its model (mode,
// download size), loads the default model through the package's worker engine without blocking
// the page's main thread, chats with streaming and Markdown, looks right on a desktop and a
// phone in light and dark (screenshots in target/screenshots/), stops a generation (an abort
// across the worker boundary), keeps its settings and reloads from the browser cache, and
// recovers from a corrupted cached shard. One persistent browser profile for the whole run, so
// the Cache API and localStorage survive page reloads.
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
import { startMainThreadProbe } from './mainthread.mjs';
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
const STEP_COUNT = 8;
/** Where the screenshots of the page go (desktop and phone, light and dark). */
const SHOT_DIR = path.join(REPO_ROOT, 'target', 'screenshots');
/** A GGUF served locally (scripts/fetch-test-data.sh links it), for the size from a HEAD request. */
const LOCAL_GGUF = path.join(REPO_ROOT, 'target', 'test-data', 'gemma-3-270m-q4_k_m.gguf');

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
/** The download size the page must show before Load: the manifest's shards, in MB. */
const DOWNLOAD_MB = `${(manifest.shards.reduce((n, s) => n + s.size, 0) / 1e6).toFixed(1)} MB`;

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

/** #model-size once its check is done: { text, bytes }. */
async function modelSize() {
  await page.waitForFunction(() => document.getElementById('model-size').dataset.state === 'done', null, { timeout: 30_000, polling: 100 });
  return page.$eval('#model-size', (e) => ({ text: e.textContent.trim(), bytes: Number(e.dataset.bytes) || 0 }));
}

/** Types `url` into #model-url and waits for the page to describe it. */
async function typeModelUrl(url) {
  await page.fill('#model-url', url);
  await page.waitForFunction(() => document.getElementById('model-size').dataset.state === 'checking', null, { timeout: 5_000, polling: 50 }).catch(() => {});
  return modelSize();
}

/**
 * Open the page and press Load; resolves when the state is 'ready', throws on 'error'. On the
 * first visit (a fresh profile) the page must suit its model before Load: the pretrained default
 * opens in Complete mode, an instruction-tuned one in Chat, and the download size is shown
 * (the manifest's shards; a GGUF's HEAD Content-Length, or 'unknown'). `mode` is the mode the
 * default model must open in; with `probe`, the page's main thread is timed during the load.
 */
async function openAndLoad({ reload = false, mode = 'complete', probe = false } = {}) {
  const notes = [];
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
  // Before Load: the mode suits the model, and the download size is the manifest's.
  let size = await modelSize();
  const opened = await page.inputValue('#mode');
  assert(opened === mode, `the default model opened in '${opened}' mode, not '${mode}'`);
  assert(size.text.includes(DOWNLOAD_MB), `#model-size reads '${size.text}', not the manifest's ${DOWNLOAD_MB}`);
  notes.push(`opened in ${opened} mode, '${size.text}'`);
  const gguf = options.find((v) => v.includes('gemma-2-2b-it'));
  await page.selectOption('#model-pick', gguf);
  const facts = await page.textContent('#model-facts');
  assert((await page.inputValue('#model-url')) === gguf && /GGUF by URL/.test(facts) && /context 8,192/.test(facts), `picking ${gguf} gave URL '${await page.inputValue('#model-url')}' and facts '${facts}'`);
  assert((await page.inputValue('#mode')) === 'chat', `the instruction-tuned ${gguf} opened in '${await page.inputValue('#mode')}' mode, not 'chat'`);
  if (!reload) {
    // A GGUF by URL, not in the list: its size from a HEAD request (or 'unknown'), its mode from
    // its name.
    if (fs.existsSync(LOCAL_GGUF)) {
      size = await typeModelUrl('../target/test-data/gemma-3-270m-q4_k_m.gguf');
      const want = fs.statSync(LOCAL_GGUF).size;
      assert(size.bytes === want && (await page.inputValue('#mode')) === 'complete',
        `the local base GGUF: size '${size.text}' (${size.bytes} bytes, want ${want}), mode '${await page.inputValue('#mode')}'`);
      notes.push(`a local GGUF: '${size.text}' (HEAD), complete`);
    }
    size = await typeModelUrl('../target/no-such/gemma-3-1b-it-Q4_K_M.gguf');
    assert(/unknown/.test(size.text) && (await page.inputValue('#mode')) === 'chat',
      `a missing '-it' GGUF: size '${size.text}', mode '${await page.inputValue('#mode')}'`);
    notes.push(`a missing -it GGUF: '${size.text}', chat`);
  }
  await page.selectOption('#model-pick', 'models/default/');
  size = await modelSize();
  assert((await page.inputValue('#mode')) === mode && size.text.includes(DOWNLOAD_MB),
    `back to the default: mode '${await page.inputValue('#mode')}', size '${size.text}'`);
  const probing = probe ? await startMainThreadProbe(page) : null;
  await page.click('#load');
  const s = await waitForState(['ready', 'error'], LOAD_TIMEOUT);
  const main = await probing?.stop();
  if (s !== 'ready') throw new Error(`loading ended in state '${s}': ${await errorText()}`);
  const [value, max] = await page.$eval('#progress', (p) => [p.value, p.max]);
  assert(max > 0 && value === max, `the progress bar ended at ${value} of ${max}`);
  await assertNoError('after loading');
  if (main) {
    longest = main;
    assert(main.ok, `the page's main thread blocked during the load: ${main.summary}`);
    notes.push(`main thread during the load: ${main.summary}`);
  }
  return notes;
}

/** The main thread's timing during the first load (for the summary line). */
let longest = null;

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

steps.add('the page suits its model, then loads it through the worker (main thread free, each shard fetched once)', async () => {
  const since = server.log.length;
  const t0 = Date.now();
  const notes = await openAndLoad({ probe: true });
  const requested = shardRequests(since);
  const counts = new Map([...shards.keys()].map((f) => [f, 0]));
  for (const f of requested) counts.set(f, counts.get(f) + 1);
  const wrong = [...counts].filter(([, n]) => n !== 1);
  assert(
    wrong.length === 0,
    `each shard should be requested exactly once; got ${wrong.map(([f, n]) => `${f}: ${n}`).join(', ')}`,
  );
  return `${shards.size} shards, ${((Date.now() - t0) / 1000).toFixed(1)} s; ${notes.join('; ')}`;
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

steps.add('chat: the reply streams into the assistant bubble as Markdown, then completes', async () => {
  // Chat with the pretrained model is the user's choice: the page says Complete suits it.
  await page.selectOption('#mode', 'chat');
  const hint = await page.$eval('#mode-hint', (e) => (e.hidden ? '' : e.textContent));
  assert(/pretrained/.test(hint), `Chat mode on the pretrained model shows no hint (#mode-hint: '${hint}')`);
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
  const format = await page.$$eval('#messages .msg.assistant', (bs) => bs.at(-1).dataset.format);
  assert(format === 'markdown', `the chat reply is rendered as '${format}', not Markdown`);
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

steps.add('markdown: replies render as sanitized Markdown with code blocks', async () => {
  const sample = [
    'Some **bold**, `code` and a [link](https://example.com).', '',
    '```js', 'const x = 1 < 2;', 'console.log(x);', '```', '',
    '- one', '- two', '',
    '<img src=x onerror="window.__pwned = 1"> <script>window.__pwned = 2</script>',
    '[bad](javascript:window.__pwned=3)',
  ].join('\n');
  const r = await page.evaluate(async (text) => {
    const html = window.gemmaDemo.renderMarkdown(text);
    const box = document.createElement('div');
    box.innerHTML = html;
    // Shown as a reply bubble for the screenshot, then removed.
    const bubble = document.createElement('div');
    bubble.className = 'msg assistant markdown';
    bubble.dataset.format = 'markdown';
    bubble.dataset.done = 'true';
    bubble.id = 'markdown-sample';
    bubble.innerHTML = html;
    document.getElementById('messages').append(bubble);
    bubble.scrollIntoView();
    await new Promise((r) => setTimeout(r, 300));
    const links = [...box.querySelectorAll('a')];
    return {
      html,
      code: box.querySelector('pre > code.language-js')?.textContent ?? null,
      strong: box.querySelector('strong')?.textContent ?? null,
      items: box.querySelectorAll('li').length,
      elements: [...box.querySelectorAll('img, script, [onerror]')].length,
      text: box.textContent,
      links: links.map((a) => ({ href: a.getAttribute('href'), rel: a.rel, target: a.target })),
      pwned: window.__pwned ?? null,
    };
  }, sample);
  await page.locator('#markdown-sample').screenshot({ path: path.join(SHOT_DIR, 'demo-markdown.png') });
  await page.evaluate(() => document.getElementById('markdown-sample').remove());
  assert(r.code === 'const x = 1 < 2;\nconsole.log(x);\n' && r.strong === 'bold' && r.items === 2,
    `the Markdown did not render: code ${JSON.stringify(r.code)}, bold ${JSON.stringify(r.strong)}, ${r.items} list items`);
  assert(r.elements === 0 && r.pwned === null && r.text.includes('<img src=x'),
    `raw HTML was not neutralised (${r.elements} img/script/onerror elements, __pwned ${r.pwned}): ${r.html}`);
  const good = r.links.find((l) => l.href === 'https://example.com');
  assert(good && good.rel.includes('noopener') && good.target === '_blank' && !r.links.some((l) => /^javascript:/i.test(l.href ?? '')),
    `links: ${JSON.stringify(r.links)}`);
  return `code block, bold, list; raw HTML shown as text; links ${JSON.stringify(r.links.map((l) => l.href))}; ${path.relative(REPO_ROOT, path.join(SHOT_DIR, 'demo-markdown.png'))}`;
});

/** Layout facts of the page as it is now (boxes in CSS pixels of the viewport). */
const layout = () =>
  page.evaluate(() => {
    const box = (sel) => {
      const e = document.querySelector(sel);
      if (!e) return null;
      const r = e.getBoundingClientRect();
      const visible = r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== 'hidden';
      return { top: r.top, bottom: r.bottom, left: r.left, right: r.right, visible };
    };
    const luminance = (css) => {
      const [r, g, b] = css.match(/[\d.]+/g).map(Number);
      return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
    };
    return {
      width: innerWidth,
      height: innerHeight,
      scrollWidth: document.documentElement.scrollWidth,
      background: luminance(getComputedStyle(document.body).backgroundColor),
      text: luminance(getComputedStyle(document.body).color),
      chat: box('.chat'), sidebar: box('.sidebar'), messages: box('#messages'), prompt: box('#prompt'), send: box('#send'),
      mode: box('#mode'), load: box('#load'), size: box('#model-size'), pick: box('#model-pick'),
      replies: document.querySelectorAll('#messages .msg.assistant').length,
      sizeText: document.getElementById('model-size').textContent,
    };
  });

steps.add('screenshots: desktop (1280x800) and phone (390x844), light and dark, with what must be there', async () => {
  fs.mkdirSync(SHOT_DIR, { recursive: true });
  const shots = [];
  const inView = (b, l) => b && b.visible && b.top >= 0 && b.bottom <= l.height + 0.5;
  try {
    for (const [name, viewport] of [['desktop', { width: 1280, height: 800 }], ['phone', { width: 390, height: 844 }]]) {
      await page.setViewportSize(viewport);
      for (const scheme of ['light', 'dark']) {
        await page.emulateMedia({ colorScheme: scheme });
        await page.evaluate(() => {
          // As a visitor sees it: the page and the settings at their tops (filling in the
          // sampling fields scrolled the sidebar), the newest message in view.
          window.scrollTo(0, 0);
          document.querySelector('.sidebar').scrollTop = 0;
          const m = document.getElementById('messages');
          m.scrollTop = m.scrollHeight;
        });
        await page.waitForTimeout(200);
        const file = path.join(SHOT_DIR, `demo-${name}-${scheme}.png`);
        await page.screenshot({ path: file });
        shots.push(path.relative(REPO_ROOT, file));
        const l = await layout();
        const where = `${name} ${scheme}`;
        assert(scheme === 'light' ? l.background > 0.8 && l.text < 0.3 : l.background < 0.2 && l.text > 0.7,
          `${where}: background luminance ${l.background.toFixed(2)}, text ${l.text.toFixed(2)}`);
        assert(l.scrollWidth <= viewport.width, `${where}: the page is ${l.scrollWidth} px wide in a ${viewport.width} px viewport`);
        assert(l.replies >= 2 && inView(l.messages, l) && inView(l.prompt, l) && inView(l.send, l) && inView(l.mode, l),
          `${where}: the conversation (${l.replies} replies), the prompt, Send or the mode is not in view: ${JSON.stringify(l)}`);
        if (name === 'desktop') {
          assert(l.chat.left > l.sidebar.right && inView(l.load, l) && inView(l.size, l) && inView(l.pick, l) && /MB/.test(l.sizeText),
            `${where}: the model panel (Load, size, list) is not beside the chat: ${JSON.stringify(l)}`);
        } else {
          assert(l.chat.top < l.sidebar.top && l.chat.bottom <= l.sidebar.top + 1,
            `${where}: the chat does not come first (chat ${JSON.stringify(l.chat)}, settings ${JSON.stringify(l.sidebar)})`);
        }
      }
    }
  } finally {
    await page.emulateMedia({ colorScheme: null });
    await page.setViewportSize(VIEWPORT);
  }
  return shots.join(', ');
});

steps.add('stop: a long generation stops promptly, and the engine still answers afterwards', async () => {
  await send('Write a long story about a lighthouse keeper and a storm.', { maxTokens: 400 });
  await firstText();
  // The live speed counts tokens (the streamed text tokenized in the worker), not pieces.
  await page.waitForFunction(() => /^\d+ tokens · ~[\d.]+ tok\/s$/.test(document.getElementById('tps').textContent), null, { timeout: 60_000, polling: 100 });
  const live = await page.textContent('#tps');
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
  const final = await page.textContent('#tps');
  const decoded = Number(final.match(/decode (\d+) tok/)?.[1]);
  const counted = Number(live.match(/^(\d+) tokens/)[1]);
  assert(/stopped/.test(final) && decoded >= counted, `after Stop #tps reads '${final}' (live: '${live}')`);

  await send('Thanks. Now say goodbye in one short sentence.', { maxTokens: 8, viaEnter: true });
  const after = await waitForReplyDone();
  assert(after.text.length > 0, 'the reply after a stopped one is empty');
  assert(!after.failed && !after.stopped, 'the reply after a stopped one is marked failed or stopped');
  await waitForState(['ready'], 10_000);
  await assertNoError('after the reply that followed Stop');
  return `live '${live}'; stopped (an abort across the worker) in ${(stopMs / 1000).toFixed(1)} s after ${stopped.text.length} chars, '${final}'; then ${JSON.stringify(after.text.slice(0, 40))}`;
});

steps.add('reload: the settings are kept, and the model loads from the browser cache, no shard downloaded again', async () => {
  await page.fill('#temperature', '0.55');
  await page.fill('#top-k', '40');
  const since = server.log.length;
  // The mode chosen by hand for this model (Chat, in the steps before) is kept too.
  await openAndLoad({ reload: true, mode: 'chat' });
  const kept = await page.evaluate(() => ['temperature', 'top-k', 'max-tokens', 'seed'].map((id) => document.getElementById(id).value));
  assert(JSON.stringify(kept) === JSON.stringify(['0.55', '40', '8', '1234']),
    `the settings after a reload are ${JSON.stringify(kept)}, not ["0.55","40","8","1234"]`);
  const requested = shardRequests(since);
  assert(requested.length === 0, `shards were downloaded again: ${requested.join(', ')}`);
  // The cached-models list shows the model (it is refreshed after a load).
  await page.waitForSelector('#cached li[data-key]', { timeout: 30_000 });
  const cached = await page.$$eval('#cached li[data-key]', (lis) =>
    lis.map((li) => `${li.querySelector('.cached-url')?.textContent} (${li.querySelector('.cached-meta')?.textContent})`),
  );
  return `settings kept (temperature, top-k, max tokens, seed, mode); cached: ${cached.join(' | ')}`;
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
  await openAndLoad({ reload: true, mode: 'chat' });
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
  if (longest) {
    console.log(`(main thread during the 270M load through the worker: longest long task ${longest.longestLongTask} ms; ` +
      `longest task in the trace ${longest.maxTaskMs.toFixed(1)} ms wall, ${longest.maxTaskCpuMs.toFixed(1)} ms CPU)`);
  }
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
