// gemma-webgpu's worker entry (`gemma-webgpu/worker`): the engine in a module Web Worker, driven
// by the client in `gemma-webgpu/client` (createWorkerGemma). Downloading, GPU upload, shader
// compilation and sampling then never block the page.
//
// The protocol is generic: the client names an object (0: the module, or a handle the worker
// gave out for a loaded model), a path of property names to a function on it and the
// arguments, and the worker calls it, so a method added to the engine works through the worker
// without a change here. Arguments are structured-clone values, except two markers the client
// puts where the page passed something that cannot be posted:
//
//   { $gemmaWorker: 'fn', index }      a function (onToken, onProgress): here a stand-in that
//                                       posts { type: 'callback', id, index, args }
//   { $gemmaWorker: 'signal', index }  an AbortSignal: here the signal of an AbortController
//                                       that the page's { type: 'abort', id } aborts
//
//   page -> worker
//     { type: 'init', wasm? }                 first message: where the .wasm is (default: next to
//                                              gemma_webgpu.js)
//     { type: 'call', id, target, path, args } call target's path[0]...path[n-1](...args)
//     { type: 'abort', id }                   abort the signals passed to call id
//     { type: 'next', id, seq }               the next item of the async iterator call id gave
//     { type: 'return', id, seq }             leave that iterator early (return())
//     { type: 'release', handle }             forget a handle (the page freed its object)
//
//   worker -> page
//     { type: 'hello', protocol, webgpu, shape }   once, when the worker runs; shape: the module's
//                                                  functions (see shapeOf)
//     { type: 'callback', id, index, args }        a function argument of call id was called
//     { type: 'result', id, value }                call id returned a value (structured clone)
//     { type: 'result', id, handle, shape }        ... an engine object (a loaded Gemma), kept
//                                                  here and named by handle
//     { type: 'result', id, iterator: true }       ... an async iterator: items come by 'next'
//     { type: 'item', id, seq, value, done }       the answer to next/return seq
//     { type: 'item', id, seq, error }             ... which threw
//     { type: 'error', id, error: { name, message, stack } }   call id threw or rejected
//
// Every call gets exactly one 'result' or 'error'; every callback of a call is posted before
// its result.

import init, * as wasm from './gemma_webgpu.js';

const PROTOCOL = 1;
const post = (message, transfer = []) => self.postMessage(message, transfer);

/** wasm initialisation, started by the first message ('init', or any other). */
let ready = null;
/** The module's WebAssembly.Memory, once initialised (its buffer is never transferred). */
let memory = null;
const start = (wasmUrl) => {
  ready ??= init(wasmUrl ? { module_or_path: wasmUrl } : undefined).then((exports) => {
    memory = exports?.memory ?? null;
    return exports;
  });
  return ready;
};

/** What the page can call besides handles: the module's functions and the Gemma class's. */
const root = {};
for (const [key, value] of Object.entries(wasm)) {
  if (key !== 'default' && key !== 'initSync' && key !== 'start') root[key] = value;
}

/** Engine objects the page holds by number (handle 0 is the module). */
const handles = new Map([[0, root]]);
let nextHandle = 1;

/** Calls in flight or with a live iterator: id -> { controllers, iterator?, chain }. */
const calls = new Map();

/** A plain, cloneable { name, message, stack } from anything thrown. */
function toError(e) {
  if (e && typeof e === 'object') {
    return { name: String(e.name || 'Error'), message: String(e.message ?? e), stack: e.stack ? String(e.stack) : undefined };
  }
  return { name: 'Error', message: String(e) };
}

const MARK = '$gemmaWorker';
const isPlainObject = (v) => {
  if (v === null || typeof v !== 'object') return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
};

/** The arguments as the engine gets them: markers become stand-in functions and signals. */
function revive(value, call, depth = 0) {
  if (depth > 16 || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((v) => revive(v, call, depth + 1));
  if (!isPlainObject(value)) return value;
  if (value[MARK] === 'fn') {
    const index = value.index;
    return (...args) => {
      post({ type: 'callback', id: call.id, index, args: args.map((a) => cloneable(a)) });
    };
  }
  if (value[MARK] === 'signal') {
    let c = call.controllers[value.index];
    if (!c) c = call.controllers[value.index] = new AbortController();
    if (call.aborted) c.abort();
    return c.signal;
  }
  const out = {};
  for (const [k, v] of Object.entries(value)) out[k] = revive(v, call, depth + 1);
  return out;
}

/** A wasm-bindgen object (it owns wasm memory and has methods): stays here, named by a handle. */
const isEngineObject = (v) =>
  v !== null && typeof v === 'object' && (v instanceof wasm.Gemma || ('__wbg_ptr' in v && typeof v.free === 'function'));

const isAsyncIterable = (v) =>
  v !== null && (typeof v === 'object' || typeof v === 'function') && typeof v[Symbol.asyncIterator] === 'function';

/**
 * A structured-clone-safe copy of a value from the engine: BigInts stay (they clone), functions
 * are dropped, getter-only properties of class instances are read out, typed arrays and Maps
 * are kept. `transfer` collects buffers that may move rather than be copied.
 */
function cloneable(value, transfer = null, depth = 0) {
  if (value === null || value === undefined) return value;
  if (typeof value === 'function') return undefined;
  if (typeof value !== 'object' || depth > 16) return value;
  if (ArrayBuffer.isView(value)) {
    // A fresh array that owns its whole buffer moves; a view into wasm memory is copied.
    const buffer = value.buffer;
    if (
      transfer &&
      buffer instanceof ArrayBuffer &&
      buffer.byteLength === value.byteLength &&
      !(memory && buffer === memory.buffer)
    ) {
      transfer.push(buffer);
    }
    return value;
  }
  if (value instanceof ArrayBuffer || value instanceof Date || value instanceof RegExp || value instanceof Blob) return value;
  if (Array.isArray(value)) return value.map((v) => cloneable(v, transfer, depth + 1));
  if (value instanceof Map) {
    return new Map([...value].map(([k, v]) => [cloneable(k, transfer, depth + 1), cloneable(v, transfer, depth + 1)]));
  }
  if (value instanceof Error || value instanceof DOMException) return toError(value);
  const out = {};
  for (const key of Object.keys(value)) {
    if (!key.startsWith('__wbg')) out[key] = cloneable(value[key], transfer, depth + 1);
  }
  const proto = Object.getPrototypeOf(value);
  if (proto && proto !== Object.prototype) {
    for (const [key, desc] of Object.entries(Object.getOwnPropertyDescriptors(proto))) {
      if (desc.get && !(key in out)) out[key] = cloneable(value[key], transfer, depth + 1);
    }
  }
  return out;
}

const SKIP = new Set([
  'constructor', 'free', 'length', 'name', 'prototype', 'caller', 'arguments', 'toString', 'toJSON',
  '__wrap', '__unwrap', '__destroy_into_raw',
]);

/** Names of `obj`'s members: its own and, for non-functions, its prototypes' (up to Object's). */
function memberNames(obj) {
  const names = new Set(Object.getOwnPropertyNames(obj));
  if (typeof obj !== 'function') {
    for (let p = Object.getPrototypeOf(obj); p && p !== Object.prototype && p !== Function.prototype; p = Object.getPrototypeOf(p)) {
      for (const n of Object.getOwnPropertyNames(p)) names.add(n);
    }
  }
  return [...names].filter((n) => !SKIP.has(n) && !n.startsWith('__wbg'));
}

/**
 * The callable members of `obj`, as the client rebuilds them: { name: { call, props } }, where
 * call says whether it is a function and props are its own members (so `gemma.chat.completions
 * .create` is found on a `chat` function or a `chat` object alike).
 */
function shapeOf(obj, depth = 0, seen = new Set()) {
  const shape = {};
  if (depth > 3 || seen.has(obj)) return shape;
  seen.add(obj);
  for (const key of memberNames(obj)) {
    let v;
    try {
      v = obj[key];
    } catch {
      continue;
    }
    if (typeof v === 'function') {
      // A class (Gemma on the module) is a namespace of its static functions, not a callee.
      const isClass = /^class[\s{]/.test(Function.prototype.toString.call(v));
      shape[key] = { call: !isClass, props: shapeOf(v, depth + 1, seen) };
    } else if (v !== null && typeof v === 'object' && !ArrayBuffer.isView(v) && !Array.isArray(v)) {
      const props = shapeOf(v, depth + 1, seen);
      if (Object.keys(props).length) shape[key] = { call: false, props };
    }
  }
  return shape;
}

/** Answer call `id` with what the engine returned. */
async function answer(call, value) {
  if (isEngineObject(value)) {
    const handle = nextHandle++;
    handles.set(handle, value);
    post({ type: 'result', id: call.id, handle, shape: shapeOf(value) });
    calls.delete(call.id);
    return;
  }
  if (isAsyncIterable(value)) {
    call.iterator = value[Symbol.asyncIterator]();
    post({ type: 'result', id: call.id, iterator: true });
    return; // the call stays while its iterator lives
  }
  const transfer = [];
  const clone = cloneable(value, transfer);
  calls.delete(call.id);
  try {
    post({ type: 'result', id: call.id, value: clone }, transfer);
  } catch (e) {
    post({ type: 'error', id: call.id, error: toError(e) });
  }
}

async function onCall({ id, target, path, args }) {
  const call = { id, controllers: [], aborted: false, iterator: null, chain: Promise.resolve() };
  calls.set(id, call);
  try {
    const revived = revive(args ?? [], call);
    await start();
    let self_ = handles.get(target ?? 0);
    if (!self_) {
      throw Object.assign(new Error('This model was freed: load it again.'), { name: 'DisposedError' });
    }
    if (!Array.isArray(path) || path.length === 0) throw new TypeError('a call needs a path');
    for (const key of path.slice(0, -1)) self_ = self_?.[key];
    const last = path[path.length - 1];
    const fn = self_?.[last];
    if (typeof fn !== 'function') {
      throw Object.assign(new Error(`The engine has no function '${path.join('.')}' (an older package in the worker?).`), {
        name: 'InvalidArgumentError',
      });
    }
    const value = await fn.apply(self_, revived);
    await answer(call, value);
    if (target !== 0 && last === 'free') handles.delete(target);
  } catch (e) {
    calls.delete(id);
    post({ type: 'error', id, error: toError(e) });
  }
}

function onAbort({ id }) {
  const call = calls.get(id);
  if (!call) return;
  call.aborted = true;
  for (const c of call.controllers) c?.abort();
}

/** next() or return() of call id's iterator, one at a time, in the order they were asked. */
function onIterate({ type, id, seq }) {
  const call = calls.get(id);
  if (!call?.iterator) {
    post({ type: 'item', id, seq, value: undefined, done: true });
    return;
  }
  call.chain = call.chain.then(async () => {
    try {
      const step = type === 'return'
        ? await (call.iterator.return?.() ?? { done: true, value: undefined })
        : await call.iterator.next();
      const transfer = [];
      post({ type: 'item', id, seq, value: cloneable(step.value, transfer), done: Boolean(step.done) }, transfer);
      if (step.done || type === 'return') calls.delete(id);
    } catch (e) {
      calls.delete(id);
      post({ type: 'item', id, seq, error: toError(e) });
    }
  });
}

self.onmessage = ({ data }) => {
  switch (data?.type) {
    case 'init':
      start(data.wasm).catch(() => {}); // each call reports the failure
      break;
    case 'call':
      onCall(data);
      break;
    case 'abort':
      onAbort(data);
      break;
    case 'next':
    case 'return':
      onIterate(data);
      break;
    case 'release':
      if (data.handle !== 0) handles.delete(data.handle);
      break;
    default:
      console.warn('gemma-webgpu worker: unknown message', data);
  }
};

post({ type: 'hello', protocol: PROTOCOL, webgpu: Boolean(self.navigator?.gpu), shape: shapeOf(root) });
