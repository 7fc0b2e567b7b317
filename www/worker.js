// The engine's home: a module Web Worker, so that downloading, GPU upload, shader compilation
// and token sampling never block the page.
//
// Message protocol (structured-clone objects; `id` ties replies to the request that caused them):
//
//   page -> worker
//     { type: 'load',        id, url, options: { maxContext?, cache? } }
//     { type: 'chat',        id, messages: [{ role, content }], options: { maxTokens, temperature, topK, topP, seed? } }
//     { type: 'complete',    id, prompt, options }   continue plain text (no chat template); replies like chat
//     { type: 'stop' }                       abort the running generation (no reply of its own:
//                                            the chat request finishes with done { stopped: true })
//     { type: 'reset',       id }            forget the conversation (KV cache)
//     { type: 'listCache',   id }
//     { type: 'deleteCache', id, key }
//     { type: 'selftest',    id, kernels }   adapter report, or the kernel self-test when kernels
//
//   worker -> page
//     { type: 'hello', webgpu }              once, when the worker has started
//     { type: 'progress', id, progress }     load progress: { loadedBytes, totalBytes, file, phase, message? }
//     { type: 'token', id, text }            one streamed piece of the reply
//     { type: 'done', id, value }            the request succeeded; value per request type:
//                                              load: { stats }   chat: { reply, stopped, stats }
//                                              reset: null   listCache: [models]   deleteCache: boolean
//                                              selftest: string
//     { type: 'error', id, error: { name, message } }   the request failed
//
// Every request with an id gets exactly one 'done' or 'error'.

// A namespace import: a package built without one of these exports still starts, and only the
// feature that needs the missing export fails (with a message saying so).
import init, * as pkg from '../pkg/gemma_webgpu.js';

/** The package export `name`, or an error telling to rebuild the package. */
function exported(name) {
  if (pkg[name] === undefined) {
    throw new Error(`This build of the package has no '${name}' export; rebuild pkg/ (bash scripts/build-pkg.sh).`);
  }
  return pkg[name];
}

/** wasm initialisation, started once; every request awaits it. */
const ready = init();
/** The loaded model (a Gemma), or null. */
let gemma = null;
/** Aborts the load in progress (a new load supersedes it). */
let loadController = null;
/** Aborts the generation in progress ('stop'). */
let chatController = null;

const post = (message) => self.postMessage(message);

/** A plain, cloneable { name, message } from anything thrown. */
function toError(e) {
  if (e && typeof e === 'object') {
    return { name: String(e.name || 'Error'), message: String(e.message || e) };
  }
  return { name: 'Error', message: String(e) };
}

function noWebGPU() {
  const e = new Error(
    'This browser does not expose WebGPU to workers (navigator.gpu is missing), so the model cannot run here.',
  );
  e.name = 'NoWebGPUError';
  return e;
}

/**
 * A structured-clone-safe copy of a value from the engine: Maps become objects, BigInts numbers,
 * and getter-only properties of class instances (as wasm-bindgen makes them) are read out.
 */
function plain(value, depth = 0) {
  if (value === null || value === undefined) return value;
  if (typeof value === 'bigint') return Number(value);
  if (typeof value === 'function') return undefined;
  if (typeof value !== 'object' || depth > 8) return value;
  if (ArrayBuffer.isView(value)) return value;
  if (Array.isArray(value)) return value.map((v) => plain(v, depth + 1));
  if (value instanceof Map) {
    return Object.fromEntries([...value].map(([k, v]) => [String(k), plain(v, depth + 1)]));
  }
  const out = {};
  for (const key of Object.keys(value)) {
    if (!key.startsWith('__wbg')) out[key] = plain(value[key], depth + 1);
  }
  const proto = Object.getPrototypeOf(value);
  if (proto && proto !== Object.prototype) {
    for (const [key, desc] of Object.entries(Object.getOwnPropertyDescriptors(proto))) {
      if (desc.get && !(key in out)) out[key] = plain(value[key], depth + 1);
    }
  }
  return out;
}

/** Gemma's stats(), or null if the engine cannot give them (e.g. after a failure). */
function safeStats() {
  try {
    return gemma ? plain(gemma.stats()) : null;
  } catch {
    return null;
  }
}

/** Raise an InvalidArgumentError-like error when no model is loaded. */
function requireModel() {
  if (!gemma) {
    const e = new Error('No model is loaded yet: press Load first.');
    e.name = 'InvalidArgumentError';
    throw e;
  }
  return gemma;
}

const handlers = {
  async load({ id, url, options = {} }) {
    if (!navigator.gpu) throw noWebGPU();
    // A new load replaces the current model and cancels a load still in progress.
    loadController?.abort();
    chatController?.abort();
    const controller = (loadController = new AbortController());
    if (gemma) {
      try {
        gemma.dispose();
      } catch {
        /* already gone */
      }
      gemma = null;
    }
    try {
      const model = await exported('Gemma').load(url, {
        ...options,
        signal: controller.signal,
        onProgress: (progress) => post({ type: 'progress', id, progress: plain(progress) }),
      });
      if (controller.signal.aborted) {
        model.dispose();
        throw Object.assign(new Error('Loading was cancelled.'), { name: 'AbortError' });
      }
      gemma = model;
    } finally {
      if (loadController === controller) loadController = null;
    }
    return { stats: safeStats() };
  },

  async chat({ id, messages, prompt, options = {} }) {
    const model = requireModel();
    const controller = (chatController = new AbortController());
    let reply = '';
    // 'complete' requests come here too, with a prompt instead of messages.
    const run = prompt === undefined ? (o) => model.chat(messages, o) : (o) => model.generate(prompt, o);
    try {
      reply = await run({
        ...options,
        signal: controller.signal,
        onToken: (text) => {
          reply += text;
          post({ type: 'token', id, text });
        },
      });
      return { reply, stopped: false, stats: safeStats() };
    } catch (e) {
      // A stopped generation is a normal ending: the text already streamed stays valid.
      if (e?.name === 'AbortError' && controller.signal.aborted) {
        return { reply, stopped: true, stats: safeStats() };
      }
      throw e;
    } finally {
      if (chatController === controller) chatController = null;
    }
  },

  async complete(request) {
    return handlers.chat(request);
  },

  stop() {
    chatController?.abort();
  },

  async reset() {
    gemma?.reset();
    return null;
  },

  async listCache() {
    return plain(await exported('Gemma').listCachedModels());
  },

  async deleteCache({ key }) {
    return Boolean(await exported('Gemma').deleteCachedModel(key));
  },

  async selftest({ kernels }) {
    if (!navigator.gpu) throw noWebGPU();
    return String(await exported(kernels ? 'kernelSelfTest' : 'adapterReport')());
  },
};

self.onmessage = async ({ data }) => {
  const handler = handlers[data?.type];
  if (!handler) {
    console.warn('worker: unknown message', data);
    return;
  }
  // 'stop' has no id and no reply; it must act at once, not wait behind anything.
  if (data.type === 'stop') return handler(data);
  try {
    await ready;
    const value = await handler(data);
    post({ type: 'done', id: data.id, value });
  } catch (e) {
    if (!(e?.name === 'AbortError')) console.error(`worker: ${data.type} failed:`, e);
    post({ type: 'error', id: data.id, error: toError(e) });
  }
};

post({ type: 'hello', webgpu: Boolean(navigator.gpu) });
