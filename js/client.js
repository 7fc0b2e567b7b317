// gemma-webgpu's worker client (`gemma-webgpu/client`): the engine in a module Web Worker
// (`gemma-webgpu/worker`), used from the page with the main-thread API's methods, so that
// downloading, GPU upload, shader compilation and sampling never block the page.
//
//   import { createWorkerGemma } from 'gemma-webgpu/client';
//   const engine = createWorkerGemma();             // starts the worker
//   const gemma = await engine.load(url, { onProgress, signal });   // as Gemma.load
//   await gemma.generate('Once', { maxTokens: 32, onToken: (t) => {}, signal });
//   for await (const piece of gemma.stream('Once')) {}
//   await gemma.chat(messages, options);  gemma.chat.completions.create({ messages, stream })
//   await gemma.tokenize('Hi');  await gemma.stats();  await gemma.dispose();
//   await engine.listCachedModels();  engine.terminate();
//
// Every method of the main-thread Gemma returns the same value here, as a promise (tokenize,
// detokenize, stats, reset and dispose answer at once there; here they cross to the worker and
// back). Methods are forwarded by name: the worker describes the loaded model's methods (and
// their members, such as chat.completions.create), so a method added to the engine is here
// too. Functions in the options (onToken, onProgress) are called here as the worker reports
// them, and an AbortSignal aborts the call in the worker. Errors keep their name and message
// (AbortError, InvalidArgumentError, DisposedError, …). An async iterator (stream(),
// chat.completions.create({ stream: true })) yields its items here; leaving the loop early
// ends it in the worker. The protocol is described in worker.js.

const MARK = '$gemmaWorker';

/** An Error with the engine's error name. */
function namedError(name, message) {
  const e = new Error(message);
  e.name = name;
  return e;
}

/** The Error a worker-side { name, message, stack } stands for. */
function fromWorker(error) {
  const e = namedError(String(error?.name || 'Error'), String(error?.message ?? error));
  if (error?.stack) Object.defineProperty(e, 'workerStack', { value: error.stack, enumerable: false });
  return e;
}

/** As the engine describes a thrown value in its messages ("Error: boom", "'text'", JSON). */
function describe(v) {
  if (v instanceof Error || (v && typeof v === 'object' && 'name' in v && 'message' in v)) return `${v.name}: ${v.message}`;
  if (typeof v === 'string') return `'${v}'`;
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

const isPlainObject = (v) => {
  if (v === null || typeof v !== 'object') return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
};

/**
 * The arguments as they are posted: functions and AbortSignals become markers (recorded on
 * `call`), the rest is left to structured clone.
 */
function encode(value, call, key = '', depth = 0) {
  if (typeof value === 'function') {
    if (key === 'fetch') {
      throw namedError(
        'InvalidArgumentError',
        "fetch: a replacement fetch cannot run across the worker boundary (the engine needs its Response); use the main-thread Gemma.load for it",
      );
    }
    call.fns.push({ fn: value, key });
    return { [MARK]: 'fn', index: call.fns.length - 1 };
  }
  if (typeof AbortSignal !== 'undefined' && value instanceof AbortSignal) {
    call.signals.push(value);
    return { [MARK]: 'signal', index: call.signals.length - 1 };
  }
  if (depth > 16 || value === null || typeof value !== 'object') return value;
  if (value instanceof URL) return value.href;
  if (Array.isArray(value)) return value.map((v) => encode(v, call, key, depth + 1));
  if (!isPlainObject(value)) return value;
  const out = {};
  for (const [k, v] of Object.entries(value)) out[k] = encode(v, call, k, depth + 1);
  return out;
}

/**
 * Start the engine in a module worker and return its client.
 *
 * @param {{ worker?: Worker | string | URL, wasm?: string | URL, onError?: (error: Error) => void }} [options]
 *   worker: a Worker running gemma-webgpu/worker, or its URL (default: worker.js next to this
 *   file); wasm: the .wasm's URL when a bundler moved it (default: next to gemma_webgpu.js in
 *   the worker); onError: errors of the worker that no call awaits.
 */
export function createWorkerGemma(options = {}) {
  let worker = options.worker;
  if (worker === undefined) {
    // Written out so that bundlers (Vite, webpack) see the worker and emit it.
    worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  } else if (typeof worker === 'string' || worker instanceof URL) {
    worker = new Worker(worker, { type: 'module' });
  }

  /** Calls awaiting an answer or with a live iterator: id -> call. */
  const calls = new Map();
  /** next()/return() awaiting an item: `${id}:${seq}` -> { resolve, reject }. */
  const items = new Map();
  let nextId = 1;
  let nextSeq = 1;
  let started = false;
  /** Set when the worker failed to start or was terminated: every call fails with it. */
  let failure = null;

  let readyResolve;
  let readyReject;
  const ready = new Promise((resolve, reject) => {
    readyResolve = resolve;
    readyReject = reject;
  });
  ready.catch(() => {}); // whoever awaits it sees the failure; nobody must

  const send = (message) => worker.postMessage(message);
  // A model the page dropped without free() is forgotten by the worker too (then collected
  // there, as wasm-bindgen's own finalizer frees an unreachable Gemma).
  const finalizer =
    typeof FinalizationRegistry === 'function'
      ? new FinalizationRegistry((handle) => {
          if (!failure) send({ type: 'release', handle });
        })
      : null;

  /** Stop listening to a call's signals and forget it. */
  function settle(call) {
    calls.delete(call.id);
    for (const s of call.signals) s.removeEventListener('abort', call.onAbort);
  }

  /** Fail everything in flight (and every later call) with `error`. */
  function failAll(error) {
    failure = error;
    readyReject(error);
    for (const call of calls.values()) {
      settle(call);
      call.reject?.(error);
      call.iterator?.fail(error);
    }
    for (const item of items.values()) item.reject(error);
    items.clear();
  }

  /** Call `path` on `target` (0: the module; else a model's handle) in the worker. */
  function remoteCall(target, path, args) {
    const call = { id: nextId++, fns: [], signals: [], threw: null, iterator: null, reject: null, resolve: null };
    const promise = new Promise((resolve, reject) => {
      if (failure) return reject(failure);
      let encoded;
      try {
        encoded = encode(args, call);
      } catch (e) {
        return reject(e);
      }
      call.resolve = resolve;
      call.reject = reject;
      call.onAbort = () => {
        if (calls.has(call.id)) send({ type: 'abort', id: call.id });
      };
      calls.set(call.id, call);
      try {
        send({ type: 'call', id: call.id, target, path, args: encoded });
      } catch (e) {
        settle(call);
        return reject(e); // DataCloneError: an argument structured clone cannot copy
      }
      for (const s of call.signals) {
        if (s.aborted) call.onAbort();
        else s.addEventListener('abort', call.onAbort, { once: true });
      }
    });
    return iterable(promise);
  }

  /**
   * The promise of a call, usable as the async iterator it may resolve to (as the main-thread
   * `stream()` returns one at once): `for await (const x of gemma.stream(p))` works, and so does
   * `await gemma.stream(p)`.
   */
  function iterable(promise) {
    const it = async () => {
      const v = await promise;
      if (!v || typeof v.next !== 'function') throw new TypeError('this call did not return an async iterator');
      return v;
    };
    promise[Symbol.asyncIterator] = function () {
      return this;
    };
    promise.next = async (...a) => (await it()).next(...a);
    promise.return = async (value) => (await it()).return(value);
    return promise;
  }

  /** The async iterator a call returned in the worker: items come one next() at a time. */
  function remoteIterator(call) {
    let done = false;
    const ask = (type) => {
      if (failure) return Promise.reject(failure);
      const seq = nextSeq++;
      return new Promise((resolve, reject) => {
        items.set(`${call.id}:${seq}`, { resolve, reject });
        send({ type, id: call.id, seq });
      });
    };
    const finish = () => {
      done = true;
      settle(call);
    };
    const iterator = {
      [Symbol.asyncIterator]() {
        return this;
      },
      async next() {
        if (done) return { value: undefined, done: true };
        try {
          const step = await ask('next');
          if (step.done) finish();
          return step;
        } catch (e) {
          finish();
          throw call.threw ?? e;
        }
      },
      async return(value) {
        if (done) return { value, done: true };
        try {
          await ask('return');
        } finally {
          finish();
        }
        return { value, done: true };
      },
    };
    call.iterator = { fail: () => (done = true) };
    return iterator;
  }

  /** A loaded model in the worker: its methods, as the worker described them. */
  function remoteObject(handle, shape) {
    const build = (node, prefix, into) => {
      for (const [key, member] of Object.entries(node)) {
        const path = [...prefix, key];
        const value = member.call ? (...args) => remoteCall(handle, path, args) : {};
        build(member.props ?? {}, path, value);
        into[key] = value;
      }
      return into;
    };
    const obj = build(shape, [], Object.create(WorkerGemmaPrototype));
    Object.defineProperty(obj, 'handle', { value: handle });
    // free(): the worker frees and forgets its object (after dispose(), or instead of it).
    obj.free = () => {
      finalizer?.unregister(obj);
      return remoteCall(handle, ['free'], []);
    };
    finalizer?.register(obj, handle, obj);
    return obj;
  }

  worker.addEventListener('message', ({ data }) => {
    switch (data?.type) {
      case 'hello': {
        started = true;
        // Module functions and Gemma statics this client does not name yet (a newer engine).
        for (const [key, member] of Object.entries(data.shape ?? {})) {
          if (member.call && !(key in engine)) engine[key] = (...args) => remoteCall(0, [key], args);
          if (key === 'Gemma') {
            for (const [k, m] of Object.entries(member.props ?? {})) {
              if (m.call && !(k in engine.Gemma)) engine.Gemma[k] = (...args) => remoteCall(0, ['Gemma', k], args);
            }
          }
        }
        readyResolve({ webgpu: Boolean(data.webgpu), protocol: data.protocol });
        break;
      }
      case 'callback': {
        const call = calls.get(data.id);
        const entry = call?.fns[data.index];
        if (!entry || call.threw) return;
        try {
          entry.fn(...(data.args ?? []));
        } catch (e) {
          if (entry.key === 'onToken') {
            // As on the main thread: a throwing onToken stops the generation, and its error
            // (named for the option) is what the call gives.
            call.threw = namedError('InvalidArgumentError', `onToken: the callback threw ${describe(e)}`);
            send({ type: 'abort', id: call.id });
          } else {
            console.warn(`gemma-webgpu: ${entry.key || 'a callback'} threw`, e);
          }
        }
        break;
      }
      case 'result': {
        const call = calls.get(data.id);
        if (!call) return;
        if (call.threw) {
          settle(call);
          if (data.iterator) send({ type: 'return', id: call.id, seq: 0 });
          call.reject(call.threw);
        } else if (data.iterator) {
          call.resolve(remoteIterator(call)); // the call stays until its iterator ends
        } else {
          settle(call);
          call.resolve('handle' in data ? remoteObject(data.handle, data.shape ?? {}) : data.value);
        }
        break;
      }
      case 'error': {
        const call = calls.get(data.id);
        if (!call) return;
        settle(call);
        call.reject(call.threw ?? fromWorker(data.error));
        break;
      }
      case 'item': {
        const key = `${data.id}:${data.seq}`;
        const item = items.get(key);
        if (!item) return;
        items.delete(key);
        if (data.error) item.reject(fromWorker(data.error));
        else item.resolve({ value: data.value, done: Boolean(data.done) });
        break;
      }
      default:
        console.warn('gemma-webgpu: unknown message from the worker', data);
    }
  });

  worker.addEventListener('error', (event) => {
    if (!started) {
      // The module worker failed to start: usually the package is not served next to this file.
      event.preventDefault?.();
      failAll(
        namedError(
          'WorkerError',
          `The engine worker failed to start${event.message ? ` (${event.message})` : ''}. ` +
            'Is the package (worker.js, gemma_webgpu.js and its .wasm) served next to client.js? ' +
            'The browser console may tell more.',
        ),
      );
      return;
    }
    // An uncaught error inside a running worker: nobody's call; the worker keeps going.
    options.onError?.(namedError('Error', event.message || 'The engine worker reported an error.'));
  });
  worker.addEventListener('messageerror', () => {
    options.onError?.(namedError('DataCloneError', 'A message from the engine worker could not be read.'));
  });

  const Gemma = {
    load: (modelUrl, loadOptions) => remoteCall(0, ['Gemma', 'load'], [modelUrl, loadOptions]),
    listCachedModels: () => remoteCall(0, ['Gemma', 'listCachedModels'], []),
    deleteCachedModel: (key) => remoteCall(0, ['Gemma', 'deleteCachedModel'], [key]),
  };
  const engine = {
    worker,
    ready,
    Gemma,
    load: Gemma.load,
    listCachedModels: Gemma.listCachedModels,
    deleteCachedModel: Gemma.deleteCachedModel,
    adapterReport: () => remoteCall(0, ['adapterReport'], []),
    kernelSelfTest: () => remoteCall(0, ['kernelSelfTest'], []),
    /** Any function of the module, by its path ('adapterReport', ['Gemma', 'load']). */
    call: (path, ...args) => remoteCall(0, typeof path === 'string' ? path.split('.') : path, args),
    /** Stop the worker: its models are gone, and every call in flight or later rejects. */
    terminate() {
      if (failure?.name === 'DisposedError') return;
      worker.terminate();
      failAll(namedError('DisposedError', 'The engine worker was terminated; create another to load a model.'));
    },
  };

  send({ type: 'init', wasm: options.wasm ? String(options.wasm) : undefined });
  return engine;
}

/** The prototype of the models createWorkerGemma's load gives (for instanceof). */
const WorkerGemmaPrototype = {};
export const WorkerGemma = function WorkerGemma() {
  throw new TypeError('WorkerGemma objects come from createWorkerGemma().load(...)');
};
WorkerGemma.prototype = WorkerGemmaPrototype;
Object.defineProperty(WorkerGemmaPrototype, 'constructor', { value: WorkerGemma });
