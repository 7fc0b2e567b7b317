// The demo page: UI only. The engine runs in worker.js (see the message protocol there), so
// the page stays responsive while the model downloads, compiles and generates.
//
// document.body.dataset.state is always one of
//   'idle'       nothing loaded
//   'loading'    a model is loading
//   'ready'      a model is loaded and idle (also after a failed or stopped generation)
//   'generating' a reply is being generated
//   'error'      the last load failed
// Tests wait on it.

const $ = (id) => document.getElementById(id);
const el = {
  modelPick: $('model-pick'),
  modelFacts: $('model-facts'),
  modelUrl: $('model-url'),
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
  mode: $('mode'),
  seed: $('seed'),
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

// ---------------------------------------------------------------------------------------------
// Worker client: request(type, payload, { onProgress, onToken }) -> Promise of the reply value.

const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
const pending = new Map(); // id -> { resolve, reject, onProgress?, onToken? }
let nextId = 1;
let workerStarted = false;
/** Set when the worker could not start: every request fails with it at once. */
let workerFailure = null;

function request(type, payload = {}, handlers = {}) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    if (workerFailure) return reject(workerFailure);
    pending.set(id, { resolve, reject, ...handlers });
    worker.postMessage({ type, id, ...payload });
  });
}

/** An Error with the engine's error name, as the page shows it. */
function namedError(name, message) {
  const e = new Error(message);
  e.name = name;
  return e;
}

worker.onmessage = ({ data }) => {
  const call = pending.get(data.id);
  switch (data.type) {
    case 'hello':
      workerStarted = true;
      if (!data.webgpu) {
        showError(namedError('NoWebGPUError', 'This browser does not offer WebGPU (navigator.gpu is missing).'));
      }
      break;
    case 'progress':
      call?.onProgress?.(data.progress);
      break;
    case 'token':
      call?.onToken?.(data.text);
      break;
    case 'done':
      pending.delete(data.id);
      call?.resolve(data.value);
      break;
    case 'error':
      pending.delete(data.id);
      call?.reject(namedError(data.error.name, data.error.message));
      break;
    default:
      console.warn('page: unknown message from worker', data);
  }
};

worker.onerror = (event) => {
  console.error('page: worker error', event.message || event);
  if (workerStarted) {
    // An uncaught error inside a running worker: surface it, the worker keeps going.
    showError(namedError('Error', event.message || 'The engine worker reported an error.'));
    return;
  }
  // The module worker failed to start (usually: the wasm package is not built or not served).
  event.preventDefault();
  const e = namedError(
    'WorkerError',
    `The engine worker failed to start${event.message ? ` (${event.message})` : ''}. ` +
      'Is the package built, up to date and served next to the page (../pkg/gemma_webgpu.js)? ' +
      'scripts/demo.sh builds it and serves the demo; the browser console may tell more.',
  );
  workerFailure = e;
  for (const call of pending.values()) call.reject(e);
  pending.clear();
  showError(e);
  if (state === 'loading' || state === 'generating') setState('error');
};

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
}

const mb = (bytes) => (Number(bytes || 0) / 1e6).toFixed(1);
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
// Loading.

const PHASES = {
  manifest: 'Reading manifest',
  waiting: 'Waiting for the download in another tab',
  download: 'Downloading',
  cache: 'Reading from cache',
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
  const raw = el.modelUrl.value.trim() || 'models/default/';
  let url;
  try {
    url = new URL(raw, location.href).href; // the worker resolves nothing relative to the page
  } catch {
    showError(namedError('InvalidArgumentError', `“${raw}” is not a valid URL.`));
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
  const started = performance.now();
  try {
    const { stats } = await request('load', { url, options: {} }, { onProgress: showProgress });
    showProgress({ phase: 'ready', loadedBytes: el.progress.max, totalBytes: el.progress.max });
    loadedUrl = url;
    updateEmptyNote();
    el.modelInfo.textContent = describeModel(stats, (performance.now() - started) / 1000);
    setState('ready');
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

function addMessage(role, text) {
  el.messages.querySelector('.empty')?.remove();
  const div = document.createElement('div');
  div.className = `msg ${role}`;
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
  if (state !== 'ready') {
    if (state === 'idle' || state === 'error') showError(namedError('InvalidArgumentError', 'Load a model first.'));
    return;
  }
  clearError();
  el.prompt.value = '';
  history.push({ role: 'user', content: text });
  const userBubble = addMessage('user', text);
  const bubble = addMessage('assistant', '');
  setState('generating');

  // Live speed: streamed pieces over the time since the first one (the prefill is excluded).
  let pieces = 0;
  let firstAt = 0;
  el.tps.textContent = 'Reading the prompt…';
  const onToken = (piece) => {
    const now = performance.now();
    if (pieces === 0) firstAt = now;
    pieces += 1;
    bubble.append(piece);
    scrollToEnd();
    if (pieces > 1) el.tps.textContent = `~${rate((pieces - 1) / ((now - firstAt) / 1000))} tok/s`;
    else el.tps.textContent = 'Generating…';
  };

  try {
    // Complete mode continues the text as written, without the chat template or the history.
    const complete = el.mode.value === 'complete';
    const { reply, stopped, stats } = await request(
      complete ? 'complete' : 'chat',
      complete ? { prompt: text, options: samplingOptions() } : { messages: history, options: samplingOptions() },
      { onToken },
    );
    if (typeof reply === 'string' && reply && reply !== bubble.textContent) bubble.textContent = reply;
    // The reply (also a stopped, partial one) is part of the conversation from now on.
    history.push({ role: 'assistant', content: bubble.textContent });
    if (stopped) bubble.dataset.stopped = 'true';
    el.tps.textContent = describeSpeed(stats, stopped) || el.tps.textContent;
  } catch (e) {
    // The turn failed: take it out of the conversation so the next one starts clean, and give
    // the text back to the prompt box (e.g. to send it again in a new chat).
    history.pop();
    userBubble.dataset.failed = 'true';
    bubble.dataset.failed = 'true';
    if (!el.prompt.value) el.prompt.value = text;
    el.tps.textContent = '';
    showError(e);
  } finally {
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
  if (state !== 'generating') return;
  el.stop.disabled = true; // one click is enough; the state goes back to 'ready' when the worker answers
  worker.postMessage({ type: 'stop' });
}

/** The hint shown in an empty chat. */
function updateEmptyNote() {
  const empty = el.messages.querySelector('.empty');
  if (!empty) return;
  empty.textContent = `${loadedUrl ? 'Say hello.' : 'Load a model, then say hello.'} Enter sends, Shift+Enter starts a new line.`;
}

/** Forget the conversation (here and, unless local, the engine's KV cache). */
async function startNewChat({ local = false } = {}) {
  history = [];
  el.messages.replaceChildren();
  const empty = document.createElement('p');
  empty.className = 'empty muted';
  el.messages.append(empty);
  updateEmptyNote();
  el.tps.textContent = '';
  if (local || state !== 'ready') return;
  clearError();
  try {
    await request('reset');
  } catch (e) {
    showError(e);
  }
}

// ---------------------------------------------------------------------------------------------
// Cached models.

async function refreshCached() {
  let models;
  try {
    models = await request('listCache');
  } catch (e) {
    el.cached.replaceChildren(listNote(`Cache Storage unavailable: ${e.name}: ${e.message}`));
    return;
  }
  if (!models?.length) {
    el.cached.replaceChildren(listNote('No models cached yet.'));
    return;
  }
  el.cached.replaceChildren(
    ...models.map((m) => {
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
          await request('deleteCache', { key: m.key });
        } catch (e) {
          showError(e);
        }
        refreshCached();
      };
      li.append(name, meta, del);
      return li;
    }),
  );
}

const stripSlash = (u) => String(u).replace(/\/+$/, '');

function listNote(text) {
  const li = document.createElement('li');
  li.className = 'muted';
  li.textContent = text;
  return li;
}

// ---------------------------------------------------------------------------------------------
// Adapter report and kernel self-test (the page this demo replaced), in the worker too.

/** The adapter report, asked for once. */
let reportPromise = null;

async function showAdapterReport() {
  reportPromise ??= request('selftest', { kernels: false });
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
      el.selftestOut.textContent = `${report}\n\n${await request('selftest', { kernels: true })}`;
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

const params = new URLSearchParams(location.search);
if (params.get('model')) el.modelUrl.value = params.get('model');

// The model list (models.json): picking one fills in its URL and says what it is.
let models = [];
function describeListed(m) {
  const size = m.download_mb >= 1000 ? `${(m.download_mb / 1000).toFixed(2)} GB` : `${m.download_mb} MB`;
  return `${m.format === 'gguf' ? 'GGUF by URL' : 'converted'} · ${size} download · context ${m.context.toLocaleString()} · ${m.instruction_tuned ? 'instruction-tuned (Chat)' : 'pretrained (Complete)'}${m.note ? ` · ${m.note}` : ''}`;
}
function showPicked() {
  const m = models.find((x) => x.url === el.modelPick.value);
  el.modelFacts.textContent = m ? describeListed(m) : '';
}
el.modelPick.addEventListener('change', () => {
  const m = models.find((x) => x.url === el.modelPick.value);
  if (!m) return;
  el.modelUrl.value = m.url;
  showPicked();
  if (el.mode) el.mode.value = m.instruction_tuned ? 'chat' : 'complete';
});
fetch('models.json')
  .then((r) => (r.ok ? r.json() : { models: [] }))
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
    showPicked();
  })
  .catch(() => {});
setState('idle');
refreshCached();
if (params.has('selftest')) {
  runKernelSelftest(); // asks for the adapter report first, so the toggle below asks nothing
  el.selftest.open = true;
}
