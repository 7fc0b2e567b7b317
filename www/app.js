// The demo page: UI only. The engine runs in the package's worker (pkg/worker.js, driven by
// createWorkerGemma from pkg/client.js), so the page stays responsive while the model
// downloads, compiles and generates.
//
// document.body.dataset.state is always one of
//   'idle'       nothing loaded
//   'loading'    a model is loading
//   'ready'      a model is loaded and idle (also after a failed or stopped generation)
//   'generating' a reply is being generated
//   'error'      the last load failed
// Tests wait on it (and on #model-size's data-state: 'checking' | 'done').

import { marked } from './vendor/marked.esm.js';
import DOMPurify from './vendor/purify.es.mjs';

const $ = (id) => document.getElementById(id);
const el = {
  modelPick: $('model-pick'),
  modelFacts: $('model-facts'),
  modelUrl: $('model-url'),
  modelSize: $('model-size'),
  load: $('load'),
  progress: $('progress'),
  phase: $('phase'),
  progressBytes: $('progress-bytes'),
  notice: $('notice'),
  modelInfo: $('model-info'),
  temperature: $('temperature'),
  topK: $('top-k'),
  topP: $('top-p'),
  maxTokens: $('max-tokens'),
  seed: $('seed'),
  resetSettings: $('reset-settings'),
  mode: $('mode'),
  modeHint: $('mode-hint'),
  chatTitle: $('chat-title'),
  cached: $('cached'),
  selftest: $('selftest'),
  runSelftest: $('run-selftest'),
  selftestOut: $('selftest-out'),
  tps: $('tps'),
  newChat: $('new-chat'),
  error: $('error'),
  messages: $('messages'),
  composer: $('composer'),
  prompt: $('prompt'),
  send: $('send'),
  stop: $('stop'),
};

let state = 'idle';
/** The whole conversation, sent to chat() every turn (the engine reuses its KV cache). */
let history = [];
/** The URL of the loaded model, to mark it in the cached-models list. */
let loadedUrl = null;
/** The loaded model (a WorkerGemma: the engine's methods, answered by the worker), or null. */
let gemma = null;
/** Aborts the generation in progress (Stop). */
let generation = null;
/** The model list (models.json). */
let models = [];

/** An Error with the engine's error name, as the page shows it. */
function namedError(name, message) {
  const e = new Error(message);
  e.name = name;
  return e;
}

// ---------------------------------------------------------------------------------------------
// Settings, kept in localStorage across visits: the model URL, the sampling values, and the mode
// chosen by hand for a model (otherwise the mode follows the model).

const SETTINGS_KEY = 'gemma-webgpu-demo/settings';
const DEFAULTS = { modelUrl: 'models/default/', temperature: '0.7', topK: '64', topP: '0.95', maxTokens: '128', seed: '', modes: {} };
const FIELDS = { temperature: el.temperature, topK: el.topK, topP: el.topP, maxTokens: el.maxTokens, seed: el.seed };

function readSettings() {
  try {
    const saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || '{}');
    return { ...DEFAULTS, ...saved, modes: { ...(saved.modes ?? {}) } };
  } catch {
    return { ...DEFAULTS, modes: {} };
  }
}
let settings = readSettings();

function saveSettings() {
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  } catch {
    /* storage full or disabled: settings last for this visit */
  }
}

function applySettings() {
  for (const [key, input] of Object.entries(FIELDS)) input.value = settings[key];
  el.modelUrl.value = settings.modelUrl;
}

for (const [key, input] of Object.entries(FIELDS)) {
  for (const event of ['input', 'change']) {
    input.addEventListener(event, () => {
      settings[key] = input.value;
      saveSettings();
    });
  }
}

// ---------------------------------------------------------------------------------------------
// The engine: the package's worker client. Imported dynamically, so that a missing package is
// an error shown on the page rather than a blank one.

let engine = null;
let engineFailure = null;
const engineStarted = (async () => {
  try {
    const { createWorkerGemma } = await import('../pkg/client.js');
    engine = createWorkerGemma({ onError: (e) => showError(e) });
  } catch (e) {
    engineFailure = namedError(
      'WorkerError',
      `The engine could not start (${e?.message ?? e}). Is the package built, up to date and served next to the ` +
        'page (../pkg/client.js)? scripts/demo.sh builds it and serves the demo; the browser console may tell more.',
    );
    showError(engineFailure);
    return;
  }
  engine.ready.then(
    ({ webgpu }) => {
      if (!webgpu) showError(namedError('NoWebGPUError', 'This browser does not offer WebGPU to workers (navigator.gpu is missing).'));
    },
    (e) => {
      engineFailure = e;
      showError(e);
      if (state === 'loading' || state === 'generating') setState('error');
    },
  );
})();

async function getEngine() {
  await engineStarted;
  if (!engine) throw engineFailure;
  return engine;
}

// ---------------------------------------------------------------------------------------------
// State and small helpers.

function setState(next) {
  state = next;
  document.body.dataset.state = next;
  const busy = next === 'loading' || next === 'generating';
  el.load.disabled = busy;
  el.modelUrl.disabled = next === 'loading';
  el.modelPick.disabled = next === 'loading';
  el.send.disabled = next !== 'ready';
  el.stop.disabled = next !== 'generating';
  el.newChat.disabled = next !== 'ready';
  const inline = el.messages.querySelector('.load-inline');
  if (inline) inline.disabled = busy;
}

const mb = (bytes) => (Number(bytes || 0) / 1e6).toFixed(1);
const size = (bytes) => (bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : `${(bytes / 1e6).toFixed(1)} MB`);
const rate = (x) => (Number.isFinite(x) && x > 0 ? x.toFixed(x < 10 ? 2 : 1) : '–');

const HINTS = {
  NoWebGPUError:
    'This demo needs WebGPU: use a recent desktop Chrome or Edge (113+), Chrome on Android (121+), ' +
    'Safari 26+, or Firefox 141+ on Windows. On Linux, Chrome may need chrome://flags/#enable-unsafe-webgpu.',
  AdapterLimitsError:
    "Your GPU adapter's limits are too small for this model. Try a smaller (e.g. int4) model, " +
    'a shorter context, or another browser or GPU.',
  DownloadError:
    'Check the model URL (a directory containing manifest.json, the shards and tokenizer.json) ' +
    'and your network connection; a model on another origin must allow this page via CORS.',
  ShardCorruptError:
    'A model file does not match its checksum. Load again to fetch it anew; if this persists, the files ' +
    'on the server are damaged or come from different conversions. Deleting the cached model may help.',
  ContextOverflowError: 'The conversation no longer fits the context window. Press “New chat” to start over.',
  ModelFormatError: 'The files at this URL are not a model this version can read. Re-convert it with `gemma convert`.',
  ModelConfigError: "The model's configuration is not supported by this engine.",
  InvalidArgumentError: 'Check the settings (model URL and sampling values).',
  GPUError: 'The GPU reported an error. Reload the page and try again.',
  ShaderCompileError:
    "This browser's WebGPU could not compile one of the engine's shaders. The self-test below may tell more.",
  DisposedError: 'The model was unloaded. Load it again.',
  DeviceLostError: 'The GPU was reset. Press Load again: the model loads from the browser cache, without downloading.',
  OutOfMemoryError: 'The GPU has too little free memory. Close other tabs, lower the context length, or pick a smaller model.',
  AbortError: 'The operation was cancelled.',
  WorkerError: '',
};

function showError(e) {
  const name = e?.name || 'Error';
  const message = e?.message || String(e);
  el.error.replaceChildren();
  const title = document.createElement('div');
  title.className = 'error-title';
  title.textContent = `${name}: ${message}`;
  el.error.append(title);
  if (HINTS[name]) {
    const hint = document.createElement('div');
    hint.className = 'error-hint';
    hint.textContent = HINTS[name];
    el.error.append(hint);
  }
  el.error.hidden = false;
}

function clearError() {
  el.error.replaceChildren();
  el.error.hidden = true;
}

function showNotice(text) {
  el.notice.textContent = text;
  el.notice.hidden = !text;
}

// ---------------------------------------------------------------------------------------------
// Markdown: a reply is parsed by marked and sanitized by DOMPurify (www/vendor/). HTML the
// model writes is shown as text; what is left of the HTML marked makes is checked again: no
// images (they would fetch from elsewhere), forms, styles or scripts; links open in a new tab.

marked.use({
  gfm: true,
  breaks: true,
  renderer: {
    html({ text }) {
      return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
    },
  },
});
DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});
const PURIFY = {
  FORBID_TAGS: ['img', 'picture', 'source', 'video', 'audio', 'iframe', 'object', 'embed', 'svg', 'math', 'style', 'link',
    'meta', 'form', 'input', 'button', 'textarea', 'select'],
  FORBID_ATTR: ['style', 'id'],
  ALLOW_DATA_ATTR: false,
};

/** Sanitized HTML for a reply in Markdown. */
function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(String(text), { async: false }), PURIFY);
}

/** Show `text` in `bubble`: Markdown in Chat mode, the text as it is in Complete mode. */
function renderReply(bubble, text) {
  if (bubble.dataset.format === 'markdown') bubble.innerHTML = renderMarkdown(text);
  else bubble.textContent = text;
}

// ---------------------------------------------------------------------------------------------
// The model: what it is (pretrained or instruction-tuned, so which mode suits it) and how much
// it downloads, before it is loaded.

/** A directory URL ends with '/'; a .gguf file's does not. */
function modelHref(raw) {
  const url = new URL(raw || 'models/default/', location.href);
  if (!/\.gguf$/i.test(url.pathname) && !url.pathname.endsWith('/')) url.pathname += '/';
  return url.href;
}
const stripSlash = (u) => String(u).replace(/\/+$/, '');
const listedFor = (href) => models.find((m) => stripSlash(modelHref(m.url)) === stripSlash(href));

/**
 * Whether the model at `href` is instruction-tuned (so Chat suits it) or pretrained (Complete):
 * from the model list, else a chat template in its manifest's metadata, else its name (`-it`,
 * `instruct`, `chat` in the file or directory name, or in the manifest's name).
 */
function modelKind(href, manifest = null) {
  const listed = listedFor(href);
  if (typeof listed?.instruction_tuned === 'boolean') {
    return { instructionTuned: listed.instruction_tuned, why: 'the model list says so' };
  }
  const meta = manifest?.metadata ?? {};
  if (manifest?.chat_template || manifest?.tokenizer_config?.chat_template || meta['tokenizer.chat_template']) {
    return { instructionTuned: true, why: 'it has a chat template' };
  }
  const name = [manifest?.name, meta['general.name'], meta['general.finetune'], new URL(href).pathname.split('/').filter(Boolean).slice(-2).join('/')]
    .filter(Boolean)
    .join(' ');
  const tuned = /(^|[^a-z0-9])(it|instruct|instruction|chat)([^a-z0-9]|$)/i.test(name);
  return { instructionTuned: tuned, why: tuned ? 'its name says instruction-tuned' : 'its name is a base model’s' };
}

let kind = { instructionTuned: false, why: '' };

/** The mode for the model at `href`: chosen by hand before, else what suits the model. */
function applyMode(href) {
  kind = modelKind(href, lastManifest?.href === href ? lastManifest.manifest : null);
  const chosen = settings.modes[stripSlash(href)];
  el.mode.value = chosen ?? (kind.instructionTuned ? 'chat' : 'complete');
  updateMode();
}

function updateMode() {
  const complete = el.mode.value === 'complete';
  el.chatTitle.textContent = complete ? 'Complete text' : 'Chat';
  el.prompt.placeholder = complete ? 'Start a text for Gemma to continue…' : 'Message Gemma…';
  let hint = '';
  if (!complete && !kind.instructionTuned) {
    hint = 'This model is pretrained, not instruction-tuned: it continues text rather than answering. Complete mode suits it.';
  } else if (complete && kind.instructionTuned) {
    hint = 'Complete mode continues your text without the chat template; this instruction-tuned model answers best in Chat.';
  }
  el.modeHint.textContent = hint;
  el.modeHint.hidden = !hint;
  updateEmptyNote();
}

el.mode.addEventListener('change', () => {
  // Chosen by hand: kept for this model, across visits.
  try {
    settings.modes[stripSlash(modelHref(el.modelUrl.value.trim()))] = el.mode.value;
    saveSettings();
  } catch {
    /* not a URL */
  }
  updateMode();
});

/** The manifest last read for the size, { href, manifest }. */
let lastManifest = null;
let describeSeq = 0;

/**
 * Shows the model's download size (a converted model: the sum of its manifest's shards; a
 * GGUF: a HEAD request's Content-Length, else the model list's figure, else unknown) and
 * whether this browser has it cached; sets the mode that suits it.
 */
async function describeTarget() {
  const seq = ++describeSeq;
  const raw = el.modelUrl.value.trim();
  let href;
  try {
    href = modelHref(raw);
  } catch {
    el.modelSize.textContent = 'Download size: unknown (not a URL)';
    el.modelSize.dataset.state = 'done';
    return;
  }
  applyMode(href);
  showPickedFacts(href);
  el.modelSize.dataset.state = 'checking';
  el.modelSize.textContent = 'Download size: checking…';
  const gguf = /\.gguf$/i.test(new URL(href).pathname);
  let bytes = null;
  let detail = '';
  try {
    if (gguf) {
      const r = await fetch(href, { method: 'HEAD' });
      const length = Number(r.headers.get('content-length'));
      if (r.ok && length > 0) bytes = length;
    } else {
      const r = await fetch(new URL('manifest.json', href));
      if (r.ok) {
        const manifest = await r.json();
        const shards = Array.isArray(manifest?.shards) ? manifest.shards : [];
        bytes = shards.reduce((sum, s) => sum + (Number(s.size) || 0), 0) || null;
        detail = ` (${shards.length} shard${shards.length === 1 ? '' : 's'})`;
        lastManifest = { href, manifest };
      }
    }
  } catch {
    /* unreachable, CORS, not JSON: the size stays unknown */
  }
  let cached = null;
  try {
    const list = await (await getEngine()).listCachedModels();
    cached = list.find((m) => m.url && stripSlash(m.url) === stripSlash(href)) ?? null;
  } catch {
    /* no cache listing: say nothing about it */
  }
  if (seq !== describeSeq) return; // the URL changed meanwhile
  const listed = listedFor(href);
  const parts = [];
  if (bytes) parts.push(`Download: <strong>${size(bytes)}</strong>${detail}`);
  else if (listed?.download_mb) parts.push(`Download: about <strong>${size(listed.download_mb * 1e6)}</strong> (listed; the server did not say)`);
  else parts.push('Download size: <strong>unknown</strong>');
  if (cached?.complete) parts.push('in this browser’s cache: loads without downloading');
  else if (cached) parts.push(`${size(cached.bytes)} of it cached`);
  el.modelSize.innerHTML = parts.join(' · ');
  el.modelSize.dataset.bytes = bytes ?? '';
  el.modelSize.dataset.state = 'done';
  if (!gguf && lastManifest?.href === href) applyMode(href); // a chat template in the manifest
  updateEmptyNote();
}

let describeTimer = 0;
el.modelUrl.addEventListener('input', () => {
  settings.modelUrl = el.modelUrl.value.trim();
  saveSettings();
  clearTimeout(describeTimer);
  describeTimer = setTimeout(describeTarget, 400);
});

// ---------------------------------------------------------------------------------------------
// Loading.

const PHASES = {
  manifest: 'Reading manifest',
  waiting: 'Waiting for the download in another tab',
  download: 'Downloading',
  cache: 'Reading from cache',
  prepared: 'Stored in the cache',
  upload: 'Uploading to GPU',
  compile: 'Compiling shaders',
  ready: 'Ready',
};

function showProgress(p) {
  if (p.phase === 'warning') {
    // e.g. caching disabled because the storage quota is too small: worth saying, not an error.
    showNotice(p.message || 'Warning');
    return;
  }
  const total = Number(p.totalBytes) || 0;
  const loaded = Number(p.loadedBytes) || 0;
  if (total > 0) {
    el.progress.max = total;
    el.progress.value = Math.min(loaded, total);
  }
  if (p.phase === 'ready') el.progress.value = el.progress.max;
  el.phase.dataset.phase = p.phase;
  const file = p.file && (p.phase === 'download' || p.phase === 'cache') ? ` ${p.file}` : '';
  el.phase.textContent = `${PHASES[p.phase] ?? p.phase}${file}${p.message ? ` (${p.message})` : ''}`;
  el.progressBytes.textContent = total > 0 ? `· ${mb(loaded)} / ${mb(total)} MB` : '';
}

async function loadModel() {
  if (state === 'loading' || state === 'generating') return;
  let url;
  try {
    url = modelHref(el.modelUrl.value.trim()); // the worker resolves nothing relative to the page
  } catch {
    showError(namedError('InvalidArgumentError', `“${el.modelUrl.value}” is not a valid URL.`));
    return;
  }
  clearError();
  showNotice('');
  loadedUrl = null;
  startNewChat({ local: true });
  el.modelInfo.textContent = '';
  el.progress.max = 1;
  el.progress.value = 0;
  el.phase.dataset.phase = 'manifest';
  el.phase.textContent = 'Starting…';
  el.progressBytes.textContent = '';
  setState('loading');
  updateEmptyNote();
  const started = performance.now();
  // A new load replaces the model: free the old one's GPU memory first.
  const old = gemma;
  gemma = null;
  if (old) {
    await old.dispose().catch(() => {});
    await old.free().catch(() => {});
  }
  try {
    const model = await (await getEngine()).load(url, { onProgress: showProgress });
    gemma = model;
    showProgress({ phase: 'ready', loadedBytes: el.progress.max, totalBytes: el.progress.max });
    loadedUrl = url;
    const stats = await model.stats().catch(() => null);
    el.modelInfo.textContent = describeModel(stats, (performance.now() - started) / 1000);
    setState('ready');
    updateEmptyNote();
    el.prompt.focus();
  } catch (e) {
    el.phase.dataset.phase = 'failed';
    el.phase.textContent = 'Load failed';
    setState('error');
    showError(e);
  }
  refreshCached();
}

function describeModel(stats, seconds) {
  const parts = [`Loaded in ${seconds.toFixed(1)} s`];
  if (stats) {
    if (stats.weightBytes) parts.push(`weights ${mb(stats.weightBytes)} MB`);
    if (stats.kvCacheBytes) parts.push(`KV cache ${mb(stats.kvCacheBytes)} MB`);
    if (stats.maxContext) parts.push(`context ${stats.maxContext} tokens`);
    if (stats.adapter) parts.push(`on ${stats.adapter}`);
  }
  return parts.join(' · ');
}

// ---------------------------------------------------------------------------------------------
// Chat.

function addMessage(role, text, format = 'text') {
  el.messages.querySelector('.empty')?.remove();
  const div = document.createElement('div');
  div.className = `msg ${role}${format === 'markdown' ? ' markdown' : ''}`;
  div.dataset.format = format;
  div.textContent = text;
  el.messages.append(div);
  scrollToEnd(true);
  return div;
}

/** Keep the newest text in view, unless the user scrolled up to read. */
function scrollToEnd(force = false) {
  const m = el.messages;
  if (force || m.scrollHeight - m.scrollTop - m.clientHeight < 80) m.scrollTop = m.scrollHeight;
}

function samplingOptions() {
  const num = (input, fallback, parse = Number.parseFloat) => {
    const v = parse(input.value);
    return Number.isFinite(v) ? v : fallback;
  };
  const options = {
    temperature: Math.max(0, num(el.temperature, 0.7)),
    topK: Math.max(1, num(el.topK, 64, Number.parseInt)),
    topP: Math.min(1, Math.max(0, num(el.topP, 0.95))),
    maxTokens: Math.max(1, num(el.maxTokens, 128, Number.parseInt)),
  };
  const seed = Number.parseInt(el.seed.value, 10);
  if (el.seed.value.trim() !== '' && Number.isFinite(seed) && seed >= 0) options.seed = seed; // empty: random
  return options;
}

async function sendMessage() {
  const text = el.prompt.value;
  if (!text.trim()) return;
  if (state !== 'ready' || !gemma) {
    if (state === 'idle' || state === 'error') showError(namedError('InvalidArgumentError', 'Load a model first.'));
    return;
  }
  const model = gemma;
  clearError();
  el.prompt.value = '';
  // Complete mode continues the text as written, without the chat template or the history;
  // its output is text. A chat reply is Markdown.
  const complete = el.mode.value === 'complete';
  history.push({ role: 'user', content: text });
  const userBubble = addMessage('user', text);
  const bubble = addMessage('assistant', '', complete ? 'text' : 'markdown');
  setState('generating');

  const controller = (generation = new AbortController());
  // The reply as it streams; rendered at most once a frame.
  let reply = '';
  let frame = 0;
  const render = () => {
    frame = 0;
    renderReply(bubble, reply);
    scrollToEnd();
  };

  // Live speed, in tokens: the streamed text is tokenized (in the worker, while it generates)
  // at most every 250 ms; the rate counts from the first piece, so the prefill is left out.
  let firstAt = 0;
  let tokens = 0;
  let counting = false;
  let countedAt = 0;
  const showLive = (seconds) => {
    el.tps.textContent = tokens > 1 ? `${tokens} tokens · ~${rate((tokens - 1) / seconds)} tok/s` : 'Generating…';
  };
  const count = async () => {
    counting = true;
    const text_ = reply;
    const at = performance.now();
    try {
      const ids = await model.tokenize(text_);
      tokens = Math.max(tokens, ids.length - 1); // BOS is not generated
      if (generation === controller) showLive((at - firstAt) / 1000);
    } catch {
      /* the live figure is best effort */
    } finally {
      counting = false;
      countedAt = performance.now();
    }
  };
  el.tps.textContent = 'Reading the prompt…';
  const onToken = (piece) => {
    const now = performance.now();
    if (!firstAt) {
      firstAt = now;
      el.tps.textContent = 'Generating…';
    }
    reply += piece;
    if (!frame) frame = requestAnimationFrame(render);
    if (!counting && now - countedAt > 250) count();
  };

  let stopped = false;
  try {
    const options = { ...samplingOptions(), onToken, signal: controller.signal };
    const text_ = complete ? await model.generate(text, options) : await model.chat(history, options);
    if (typeof text_ === 'string') reply = text_;
  } catch (e) {
    if (e?.name === 'AbortError' && controller.signal.aborted) {
      stopped = true; // a stopped generation is a normal ending: the text streamed so far stands
    } else {
      // The turn failed: take it out of the conversation so the next one starts clean, and give
      // the text back to the prompt box (e.g. to send it again in a new chat).
      history.pop();
      userBubble.dataset.failed = 'true';
      bubble.dataset.failed = 'true';
      if (!el.prompt.value) el.prompt.value = text;
      el.tps.textContent = '';
      showError(e);
    }
  } finally {
    generation = null;
    if (frame) cancelAnimationFrame(frame);
    renderReply(bubble, reply);
    if (bubble.dataset.failed !== 'true') {
      // The reply (also a stopped, partial one) is part of the conversation from now on.
      history.push({ role: 'assistant', content: reply });
      if (stopped) bubble.dataset.stopped = 'true';
      const stats = await model.stats().catch(() => null);
      el.tps.textContent = describeSpeed(stats, stopped) || el.tps.textContent;
    }
    bubble.dataset.done = 'true';
    setState('ready');
  }
}

function describeSpeed(stats, stopped) {
  if (!stats) return '';
  const parts = [];
  if (stats.prefillTokens !== undefined) {
    const reused = stats.reusedTokens ? `, ${stats.reusedTokens} reused` : '';
    parts.push(`prefill ${stats.prefillTokens} tok${reused} at ${rate(stats.prefillTokensPerSecond)} tok/s`);
  }
  if (stats.decodeTokens !== undefined) {
    parts.push(`decode ${stats.decodeTokens} tok at ${rate(stats.decodeTokensPerSecond)} tok/s`);
  }
  if (stats.contextTokens !== undefined && stats.maxContext) parts.push(`${stats.contextTokens}/${stats.maxContext} ctx`);
  if (stopped) parts.push('stopped');
  return parts.join(' · ');
}

function stopGenerating() {
  if (state !== 'generating' || !generation) return;
  el.stop.disabled = true; // one click is enough; the state goes back to 'ready' when the worker answers
  generation.abort();
}

/** The note shown in an empty chat: what to do next, in words that fit the mode. */
function updateEmptyNote() {
  const empty = el.messages.querySelector('.empty');
  if (!empty) return;
  const complete = el.mode.value === 'complete';
  const keys = 'Enter sends, Shift+Enter starts a new line.';
  const lines = [];
  if (!loadedUrl) {
    lines.push(complete ? 'Load the model, then write the beginning of a text: Gemma continues it.' : 'Load a model, then say hello.');
  } else {
    lines.push(complete ? 'Write the beginning of a text: Gemma continues it.' : 'Say hello.');
  }
  lines.push(keys);
  const nodes = lines.map((t) => Object.assign(document.createElement('p'), { textContent: t }));
  if (!loadedUrl && state !== 'loading') {
    const button = document.createElement('button');
    button.className = 'primary load-inline';
    const listed = (() => {
      try {
        return listedFor(modelHref(el.modelUrl.value.trim()));
      } catch {
        return null;
      }
    })();
    const bytes = Number(el.modelSize.dataset.bytes) || (listed?.download_mb ?? 0) * 1e6;
    button.textContent = `Load ${listed?.name ?? 'the model'}${bytes ? ` (${size(bytes)})` : ''}`;
    button.disabled = state === 'generating';
    button.addEventListener('click', loadModel);
    nodes.push(button);
  }
  empty.replaceChildren(...nodes);
}

/** Forget the conversation (here and, unless local, the engine's KV cache). */
async function startNewChat({ local = false } = {}) {
  history = [];
  el.messages.replaceChildren();
  const empty = document.createElement('div');
  empty.className = 'empty muted';
  el.messages.append(empty);
  updateEmptyNote();
  el.tps.textContent = '';
  if (local || state !== 'ready' || !gemma) return;
  clearError();
  try {
    await gemma.reset();
  } catch (e) {
    showError(e);
  }
}

// ---------------------------------------------------------------------------------------------
// Cached models.

async function refreshCached() {
  let list;
  try {
    list = await (await getEngine()).listCachedModels();
  } catch (e) {
    el.cached.replaceChildren(listNote(`Cache Storage unavailable: ${e.name}: ${e.message}`));
    return;
  }
  if (!list?.length) {
    el.cached.replaceChildren(listNote('No models cached yet.'));
    return;
  }
  el.cached.replaceChildren(
    ...list.map((m) => {
      const li = document.createElement('li');
      li.dataset.key = m.key;
      const name = document.createElement('span');
      name.className = 'cached-url';
      name.textContent = m.url || m.key;
      name.title = m.key;
      const meta = document.createElement('span');
      meta.className = 'cached-meta muted small';
      const inUse = loadedUrl && m.url && stripSlash(m.url) === stripSlash(loadedUrl) ? ' · loaded' : '';
      meta.textContent =
        `${mb(m.bytes)} MB · ${m.files} file${m.files === 1 ? '' : 's'}` +
        `${m.complete ? '' : ' · incomplete'}${inUse}`;
      const del = document.createElement('button');
      del.className = 'delete small';
      del.textContent = 'Delete';
      del.title = 'Remove this model from the browser cache';
      del.onclick = async () => {
        del.disabled = true;
        try {
          await (await getEngine()).deleteCachedModel(m.key);
        } catch (e) {
          showError(e);
        }
        refreshCached();
        describeTarget();
      };
      li.append(name, meta, del);
      return li;
    }),
  );
}

function listNote(text) {
  const li = document.createElement('li');
  li.className = 'muted';
  li.textContent = text;
  return li;
}

// ---------------------------------------------------------------------------------------------
// Adapter report and kernel self-test, in the worker too.

/** The adapter report, asked for once. */
let reportPromise = null;

async function showAdapterReport() {
  reportPromise ??= getEngine().then((e) => e.adapterReport());
  el.selftestOut.classList.remove('error-text');
  el.selftestOut.textContent = 'Asking the adapter…';
  try {
    el.selftestOut.textContent = await reportPromise;
    return true;
  } catch (e) {
    reportPromise = null; // ask again next time
    el.selftestOut.textContent = `${e.name}: ${e.message}`;
    el.selftestOut.classList.add('error-text');
    return false;
  }
}

async function runKernelSelftest() {
  el.runSelftest.disabled = true;
  try {
    if (!(await showAdapterReport())) return;
    const report = el.selftestOut.textContent;
    el.selftestOut.textContent = `${report}\n\nRunning kernel self-test…`;
    try {
      el.selftestOut.textContent = `${report}\n\n${await (await getEngine()).kernelSelfTest()}`;
    } catch (e) {
      el.selftestOut.textContent = `${report}\n\n${e.name}: ${e.message}`;
      el.selftestOut.classList.add('error-text');
    }
  } finally {
    el.runSelftest.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring.

el.load.addEventListener('click', loadModel);
el.modelUrl.addEventListener('keydown', (e) => {
  if (e.key === 'Enter') loadModel();
});
el.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  sendMessage();
});
el.prompt.addEventListener('keydown', (e) => {
  // Enter sends, Shift+Enter is a newline; never interrupt an IME composition.
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    sendMessage();
  }
});
el.stop.addEventListener('click', stopGenerating);
el.newChat.addEventListener('click', () => startNewChat());
el.selftest.addEventListener('toggle', () => {
  if (el.selftest.open && !reportPromise) showAdapterReport();
});
el.runSelftest.addEventListener('click', runKernelSelftest);
el.resetSettings.addEventListener('click', () => {
  settings = { ...DEFAULTS, modes: {} };
  saveSettings();
  applySettings();
  el.modelPick.value = models.some((m) => m.url === el.modelUrl.value) ? el.modelUrl.value : '';
  describeTarget();
});

// The model list (models.json): picking one fills in its URL and says what it is.
function describeListed(m) {
  const dl = m.download_mb >= 1000 ? `${(m.download_mb / 1000).toFixed(2)} GB` : `${m.download_mb} MB`;
  return `${m.format === 'gguf' ? 'GGUF by URL' : 'converted'} · ${dl} download · context ${m.context.toLocaleString()} · ${m.instruction_tuned ? 'instruction-tuned (Chat)' : 'pretrained (Complete)'}${m.note ? ` · ${m.note}` : ''}`;
}
function showPickedFacts(href) {
  const m = listedFor(href);
  if (m) el.modelFacts.textContent = describeListed(m);
  else el.modelFacts.textContent = `Not in the list: ${kind.instructionTuned ? 'instruction-tuned (Chat)' : 'pretrained (Complete)'}, as ${kind.why}.`;
}
el.modelPick.addEventListener('change', () => {
  const m = models.find((x) => x.url === el.modelPick.value);
  if (!m) return;
  el.modelUrl.value = m.url;
  settings.modelUrl = m.url;
  saveSettings();
  describeTarget();
});

applySettings();
const params = new URLSearchParams(location.search);
if (params.get('model')) el.modelUrl.value = params.get('model');
setState('idle');

// A hook for tests and the curious: the renderer and the engine.
window.gemmaDemo = {
  renderMarkdown,
  get engine() {
    return engine;
  },
  get gemma() {
    return gemma;
  },
};

fetch('models.json')
  .then((r) => (r.ok ? r.json() : { models: [] }))
  .catch(() => ({ models: [] }))
  .then((list) => {
    models = list.models ?? [];
    for (const m of models) {
      const o = document.createElement('option');
      o.value = m.url;
      o.textContent = m.name;
      el.modelPick.append(o);
    }
    const custom = document.createElement('option');
    custom.value = '';
    custom.textContent = 'Other (type a URL below)';
    el.modelPick.append(custom);
    el.modelPick.value = models.some((m) => m.url === el.modelUrl.value) ? el.modelUrl.value : '';
    describeTarget();
  });
refreshCached();
if (params.has('selftest')) {
  runKernelSelftest(); // asks for the adapter report first, so the toggle below asks nothing
  el.selftest.open = true;
}
