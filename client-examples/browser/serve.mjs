// A tiny static server for the browser example: index.html, app.js, the
// module it imports (../resume/herald-resume.js, served as
// /resume/herald-resume.js, where app.js's relative import points), the stock
// socket.io client bundle from node_modules, and config.js carrying the
// default herald URL. herald itself does not serve the client bundle.
//
//   HERALD_URL=http://localhost:3000 node serve.mjs
//   HOST=127.0.0.1 PORT=8080 node serve.mjs      (PORT=0 picks a free port)
//
// Then open http://127.0.0.1:8080/?session=doc-42 (the line printed at start
// says where it listens).

import http from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const host = process.env.HOST || '127.0.0.1';
const port = Number(process.env.PORT ?? 8080);
const heraldUrl = process.env.HERALD_URL || 'http://localhost:3000';

const bundle = 'node_modules/socket.io-client/dist/socket.io.min.js';

// URL path -> [file under this directory, content type]. Nothing else is served.
const files = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/resume/herald-resume.js': ['../resume/herald-resume.js', 'text/javascript; charset=utf-8'],
  [`/${bundle}`]: [bundle, 'text/javascript; charset=utf-8'],
  [`/${bundle}.map`]: [`${bundle}.map`, 'application/json'],
};

const configJs = `window.HERALD_CONFIG = ${JSON.stringify({ heraldUrl })};\n`;

const server = http.createServer(async (req, res) => {
  const { pathname } = new URL(req.url, 'http://localhost');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' }).end();
    return;
  }
  let body;
  let type;
  if (pathname === '/config.js') {
    body = configJs;
    type = 'text/javascript; charset=utf-8';
  } else if (files[pathname]) {
    const [file, contentType] = files[pathname];
    try {
      body = await readFile(path.join(here, file));
    } catch (e) {
      const hint = file.startsWith('node_modules/') ? ' (run `npm ci` in client-examples/browser)' : '';
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`cannot read ${file}: ${e.code}${hint}\n`);
      console.error(`serve: cannot read ${file}: ${e.message}${hint}`);
      return;
    }
    type = contentType;
  } else {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    return;
  }
  res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(req.method === 'HEAD' ? undefined : body);
});

server.listen(port, host, () => {
  const { port: actual } = server.address();
  console.log(`serving the browser example on http://${host}:${actual}/?session=doc-42 (herald: ${heraldUrl})`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.close(() => process.exit(0)).closeAllConnections());
}
