// A tiny static file server for the browser tests (node:http, no dependencies).
//
// Serves a directory (the repository root by default) on 127.0.0.1, with the MIME types the
// demo needs, `Cache-Control: no-store` (so only the engine's own Cache API storage can make a
// request disappear), and a log of every request so tests can count requests per path.
//
//   import { startServer } from './server.mjs';
//   const server = await startServer();          // random free port
//   server.url        // 'http://127.0.0.1:PORT'
//   server.requests   // ['/www/', '/pkg/gemma_webgpu.js', ...]  every request's path, in order
//   server.log        // [{ method, path, status, bytes }]        the same, with details
//   await server.close();
//
// Files are served whole (200) or, for a `Range: bytes=a-b` request, in part (206 with
// Content-Range), as static servers and CDNs do. Path prefixes stand in for servers that
// misbehave: `/__norange/<path>` ignores Range headers (200 with the whole file),
// `/__truncate/<n>/<path>` serves only the first n bytes of the file, as if it had been cut short,
// and `/__delay/<ms>/<path>` answers ms milliseconds late, as a slow network would (they combine,
// in this order: `/__delay/500/__norange/…`).
//
// Run directly to serve the demo by hand: `node tests/e2e/server.mjs [port]`.

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
  '.ts': 'text/plain; charset=utf-8',
  '.bin': 'application/octet-stream',
};

/**
 * Start serving `root` on 127.0.0.1.
 * @param {{ root?: string, port?: number, quiet?: boolean }} [options] port 0 (default) picks a free one
 * @returns {Promise<{ url: string, port: number, requests: string[], log: object[], close(): Promise<void> }>}
 */
export async function startServer({ root = REPO_ROOT, port = 0, quiet = true } = {}) {
  root = path.resolve(root);
  const requests = [];
  const log = [];

  const server = http.createServer((req, res) => {
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(req.url, 'http://localhost').pathname);
    } catch {
      pathname = null;
    }
    const entry = { method: req.method, path: pathname ?? req.url, status: 0, bytes: 0, range: req.headers.range ?? null };
    let ranges = true, cut = Infinity, delay = 0;
    const slow = pathname?.match(/^\/__delay\/(\d+)(\/.*)$/);
    if (slow) {
      delay = Number(slow[1]);
      pathname = slow[2];
    }
    if (pathname?.startsWith('/__norange/')) {
      ranges = false;
      pathname = pathname.slice('/__norange'.length);
    }
    const trunc = pathname?.match(/^\/__truncate\/(\d+)(\/.*)$/);
    if (trunc) {
      cut = Number(trunc[1]);
      pathname = trunc[2];
    }
    requests.push(entry.path);
    log.push(entry);
    const finish = (status, headers, body) => {
      entry.status = status;
      res.writeHead(status, { 'Cache-Control': 'no-store', ...headers });
      res.end(body);
      if (!quiet) console.log(`${status} ${req.method} ${entry.path}`);
    };

    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return finish(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' }, 'method not allowed\n');
    }
    // Resolve inside the root; anything that climbs out of it is refused.
    const file = pathname === null ? null : path.resolve(root, '.' + pathname);
    if (file === null || (file !== root && !file.startsWith(root + path.sep))) {
      return finish(400, { 'Content-Type': 'text/plain' }, 'bad path\n');
    }

    setTimeout(() => fs.stat(file, (err, stat) => {
      if (err) return finish(404, { 'Content-Type': 'text/plain' }, 'not found\n');
      if (stat.isDirectory()) {
        // '/www' -> '/www/' so that relative URLs in the page resolve against the directory.
        if (!pathname.endsWith('/')) {
          return finish(301, { Location: pathname + '/' + new URL(req.url, 'http://localhost').search }, '');
        }
        const index = path.join(file, 'index.html');
        return fs.stat(index, (err2, stat2) => {
          if (err2 || !stat2.isFile()) return finish(404, { 'Content-Type': 'text/plain' }, 'no index.html\n');
          sendFile(index, stat2.size);
        });
      }
      if (!stat.isFile()) return finish(404, { 'Content-Type': 'text/plain' }, 'not found\n');
      sendFile(file, stat.size);
    }), delay);

    function sendFile(file, fullSize) {
      const size = Math.min(fullSize, cut);
      const type = MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
      const m = ranges && req.headers.range?.match(/^bytes=(\d+)-(\d*)$/);
      let start = 0, end = size - 1, status = 200;
      const headers = { 'Content-Type': type, 'Cache-Control': 'no-store' };
      if (ranges) headers['Accept-Ranges'] = 'bytes';
      if (m) {
        start = Number(m[1]);
        end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
        if (start >= size || end < start) {
          return finish(416, { 'Content-Range': `bytes */${size}`, 'Content-Type': 'text/plain' }, 'range not satisfiable\n');
        }
        status = 206;
        headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
      }
      const length = end - start + 1;
      headers['Content-Length'] = length;
      entry.status = status;
      entry.bytes = length;
      res.writeHead(status, headers);
      if (!quiet) console.log(`${status} ${req.method} ${entry.path} (${length} bytes)`);
      if (req.method === 'HEAD' || length <= 0) return res.end();
      const stream = fs.createReadStream(file, { start, end });
      stream.on('error', () => res.destroy());
      stream.pipe(res);
    }
  });
  // A browser aborting a download (e.g. a test reloading the page) is not a server error.
  server.on('clientError', (_err, socket) => socket.destroy());

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const actualPort = server.address().port;
  return {
    url: `http://127.0.0.1:${actualPort}`,
    port: actualPort,
    requests,
    log,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

// `node tests/e2e/server.mjs [port]`: serve the repository root until Ctrl-C.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const port = Number(process.argv[2] ?? process.env.PORT ?? 8080);
  const server = await startServer({ port, quiet: false });
  console.log(`serving ${REPO_ROOT} at ${server.url}/  (demo: ${server.url}/www/)`);
}
