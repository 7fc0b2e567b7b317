// The app the bundler e2e test builds with Vite (dev server and production build) and webpack
// (production build), from the gemma-webgpu package installed from its `npm pack` tarball
// (../../bundlers.test.mjs). It uses the package the way an app would, with a bare import and
// a default init(), and reports its checks in window.__result.
import init, { Gemma } from 'gemma-webgpu';

// The tiny test model, converted by the test and served beside the page; `?model=0` checks
// only what needs no model.
const MODEL = new URL('model/', document.baseURI).href;
const WITH_MODEL = new URLSearchParams(location.search).get('model') !== '0';

const out = document.getElementById('out') ?? document.body.appendChild(document.createElement('pre'));
const checks = [];
const check = (name, ok, detail = '') => {
  checks.push({ name, ok: Boolean(ok), detail: String(detail) });
  out.append(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? ` — ${detail}` : ''}\n`);
};
const show = (s) => JSON.stringify(s);
const failure = async (fn) => {
  try {
    await fn();
    return { name: 'no error', message: '' };
  } catch (e) {
    return { name: e?.name ?? typeof e, message: e?.message ?? String(e) };
  }
};

async function run() {
  const t0 = performance.now();
  const wasm = await init();
  check('init() instantiates the wasm module', wasm?.memory instanceof WebAssembly.Memory && typeof Gemma?.load === 'function',
    `${(wasm?.memory?.buffer?.byteLength ?? 0) >> 20} MiB of wasm memory, ${(performance.now() - t0).toFixed(0)} ms`);

  const cached = await Gemma.listCachedModels();
  check('Gemma.listCachedModels() answers (empty in a fresh profile)', Array.isArray(cached) && cached.length === 0, show(cached));
  // A bad option is refused by name before anything is fetched (error names survive minifiers).
  const bad = await failure(() => Gemma.load(MODEL, { concurrency: 0 }));
  check('Gemma.load(url, { concurrency: 0 }) rejects with InvalidArgumentError', bad.name === 'InvalidArgumentError',
    `${bad.name}: ${bad.message}`);
  if (!WITH_MODEL) return null;

  const t1 = performance.now();
  const gemma = await Gemma.load(MODEL, { maxContext: 64, cache: false });
  check('Gemma.load(the tiny test model)', gemma, `${((performance.now() - t1) / 1000).toFixed(1)} s`);

  const prompt = 'Hello world';
  const opts = { seed: 1234, temperature: 0.9, maxTokens: 4 };
  const a = await gemma.generate(prompt, opts);
  const pieces = [];
  for await (const piece of gemma.stream(prompt, opts)) pieces.push(piece);
  check('generate, then stream with the same seed: the same text', typeof a === 'string' && pieces.join('') === a,
    `${show(a)} / ${pieces.length} pieces ${show(pieces)}`);

  const ids = gemma.tokenize(prompt);
  const text = gemma.detokenize(ids);
  check('detokenize(tokenize(s)) === s', ids instanceof Uint32Array && text === prompt, `[${Array.from(ids ?? []).join(', ')}] -> ${show(text)}`);

  gemma.dispose();
  const disposed = await failure(() => gemma.generate(prompt, opts));
  check('generate after dispose() rejects with DisposedError', disposed.name === 'DisposedError', `${disposed.name}: ${disposed.message}`);
  return a;
}

run().then(
  (text) => { window.__result = { checks, error: null, text }; },
  (e) => { window.__result = { checks, error: `${e?.name ?? 'Error'}: ${e?.message ?? e}`, text: null }; },
);
