// Shared bits of the browser tests: how Chromium is launched, where artefacts go, and a tiny
// step runner that prints one line per step and a final `test result:` line.

import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from './server.mjs';

export { REPO_ROOT };

/** Chromium with WebGPU; SwiftShader (CPU) when there is no GPU. */
export const CHROMIUM_PATH = process.env.CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--enable-unsafe-webgpu',
  '--enable-features=Vulkan',
  '--no-sandbox',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];
export const VIEWPORT = { width: 1280, height: 900 };

/** Screenshots and other artefacts. */
export const OUT_DIR = path.join(REPO_ROOT, 'target', 'e2e');

/** The model the demo loads by default (prepared by the README's main command). */
export const MODEL_DIR = path.join(REPO_ROOT, 'www', 'models', 'default');

/** Milliseconds to a human "12.3 s". */
export const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;

/**
 * Collects console messages and errors of a page and its workers, to print on failure.
 * Worker messages are taken from the worker itself (page 'console' may repeat them).
 */
export function collectConsole(page, lines = []) {
  const stamp = () => new Date().toISOString().slice(11, 23);
  page.on('console', (msg) => {
    if (msg.worker?.()) return;
    lines.push(`${stamp()} [page ${msg.type()}] ${msg.text()}`);
  });
  page.on('pageerror', (err) => lines.push(`${stamp()} [page uncaught] ${err.stack || err}`));
  page.on('crash', () => lines.push(`${stamp()} [page crashed]`));
  page.on('requestfailed', (req) =>
    lines.push(`${stamp()} [request failed] ${req.url()} ${req.failure()?.errorText ?? ''}`),
  );
  page.on('response', (res) => {
    if (res.status() >= 400) lines.push(`${stamp()} [http ${res.status()}] ${res.url()}`);
  });
  page.on('worker', (worker) => {
    lines.push(`${stamp()} [worker started] ${worker.url()}`);
    worker.on('console', (msg) => lines.push(`${stamp()} [worker ${msg.type()}] ${msg.text()}`));
    worker.on('close', () => lines.push(`${stamp()} [worker closed] ${worker.url()}`));
  });
  return lines;
}

/**
 * Runs named async steps in order, printing `step i/N name ... ok (time)` or `... FAILED: why`.
 * A step may depend on earlier ones; every step still runs (each fails fast on its own when
 * its preconditions are missing), so one run reports as much as it can.
 */
export class Steps {
  constructor() {
    this.steps = [];
    this.passed = 0;
    this.failed = 0;
    this.onFirstFailure = null; // async (error) => void, e.g. a screenshot
  }

  add(name, fn) {
    this.steps.push({ name, fn });
  }

  async run() {
    const n = this.steps.length;
    for (const [i, { name, fn }] of this.steps.entries()) {
      const t0 = Date.now();
      try {
        const note = await fn();
        this.passed += 1;
        console.log(`step ${i + 1}/${n} ${name} ... ok (${secs(Date.now() - t0)})${note ? `: ${note}` : ''}`);
      } catch (e) {
        this.failed += 1;
        console.log(`step ${i + 1}/${n} ${name} ... FAILED (${secs(Date.now() - t0)}): ${e?.message ?? e}`);
        if (this.failed === 1 && this.onFirstFailure) {
          try {
            await this.onFirstFailure(e);
          } catch (e2) {
            console.log(`  (could not record the failure: ${e2?.message ?? e2})`);
          }
        }
      }
    }
  }

  /** Prints the result line and returns the exit code. */
  report() {
    return printResult(this.passed, this.failed);
  }
}

/** `test result: ok. N passed; M failed` (or FAILED); returns the process exit code. */
export function printResult(passed, failed) {
  const ok = failed === 0 && passed > 0;
  console.log(`test result: ${ok ? 'ok' : 'FAILED'}. ${passed} passed; ${failed} failed`);
  return ok ? 0 : 1;
}

/** Throws `message` unless `condition`. */
export function assert(condition, message) {
  if (!condition) throw new Error(message);
}

export function ensureDir(dir) {
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** Prints the collected console lines (the last `max`). */
export function dumpConsole(lines, max = 400) {
  console.log(`--- browser console (${lines.length} lines${lines.length > max ? `, last ${max}` : ''}) ---`);
  for (const line of lines.slice(-max)) console.log(line);
  console.log('--- end of browser console ---');
}

/**
 * Stops the whole run after `ms` (a wedged browser must not hang CI); prints a FAILED result
 * that counts every step not passed by then as failed.
 */
export function watchdog(ms, steps, onTimeout = () => {}) {
  const timer = setTimeout(async () => {
    console.log(`watchdog: the test ran longer than ${secs(ms)}; giving up`);
    try {
      await Promise.race([onTimeout(), new Promise((r) => setTimeout(r, 15_000))]);
    } catch {
      /* best effort */
    }
    printResult(steps.passed, steps.steps.length - steps.passed);
    process.exit(1);
  }, ms);
  timer.unref();
  return timer;
}
