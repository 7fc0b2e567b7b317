// The other way to Vite 7 and older's dev server, without `optimizeDeps.exclude`: the app asks
// Vite for the .wasm's URL (the package exports the file) and hands it to init(), so the
// pre-bundled module's own guess (next to itself, in node_modules/.vite/deps/) is not used.
// Driven by ../../bundlers.test.mjs; reports in window.__result as main.js does.
import init, { Gemma } from 'gemma-webgpu';
import wasmUrl from 'gemma-webgpu/gemma_webgpu_bg.wasm?url';

const checks = [];
const check = (name, ok, detail = '') => {
  checks.push({ name, ok: Boolean(ok), detail: String(detail) });
  document.getElementById('out').append(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? ` — ${detail}` : ''}\n`);
};
try {
  const wasm = await init({ module_or_path: wasmUrl });
  check('init({ module_or_path: wasmUrl }) instantiates the wasm module', wasm?.memory instanceof WebAssembly.Memory, wasmUrl);
  const cached = await Gemma.listCachedModels();
  check('Gemma.listCachedModels() answers (empty in a fresh profile)', Array.isArray(cached) && cached.length === 0, JSON.stringify(cached));
  window.__result = { checks, error: null, text: null };
} catch (e) {
  window.__result = { checks, error: `${e?.name ?? 'Error'}: ${e?.message ?? e}`, text: null };
}
