// TypeScript: a file written against the `openai` package's request and response types calls
// `gemma.chat.completions.create` (both forms) and compiles with `tsc --noEmit` against the
// package's declarations (pkg/gemma_webgpu.d.ts, as built); a file misusing the response
// fails to compile, so the check can fail.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { REPO_ROOT, Steps, assert } from './harness.mjs';

const dir = path.join(REPO_ROOT, 'tests', 'e2e', 'types');
const tsc = path.join(REPO_ROOT, 'tests', 'e2e', 'node_modules', 'typescript', 'bin', 'tsc');
const compile = (config) => spawnSync(process.execPath, [tsc, '-p', path.join(dir, config)], { encoding: 'utf8' });

const steps = new Steps();
steps.add('openai-typed calls compile', () => {
  const r = compile('tsconfig.json');
  assert(r.status === 0, `tsc failed:\n${r.stdout}${r.stderr}`);
  return 'tsc --noEmit: no errors';
});
steps.add('a misuse does not compile', () => {
  const r = compile('tsconfig.fail.json');
  assert(r.status !== 0, 'tsc accepted must-fail.ts');
  assert(/must-fail\.ts\(7,.*delta/.test(r.stdout), `unexpected errors:\n${r.stdout}`);
  return r.stdout.trim().split('\n')[0];
});
await steps.run();
process.exit(steps.report());
