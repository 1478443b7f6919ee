// The part of your backend that hands browsers herald tokens: one route that
// mints a short-lived JWT for the session the user may watch, with the
// `jsonwebtoken` package and herald's JWT_SECRET.
//
//   JWT_SECRET=... PORT=4000 node token-backend.mjs
//   curl 'http://127.0.0.1:4000/token?session=doc-42'
//
// A real backend checks who is asking (its own session cookie) and which
// sessions that user may see before signing; this one signs for anyone.
// TOKEN_TTL (seconds, default 300) is short on purpose: herald closes a
// socket's transport when its token expires, and the client fetches a new
// token as it reconnects (see watch-with-token.mjs).

import http from 'node:http';
import jwt from 'jsonwebtoken';

const secret = process.env.JWT_SECRET;
if (!secret) {
  console.error('set JWT_SECRET to the secret herald checks tokens with');
  process.exit(2);
}
const ttl = Number(process.env.TOKEN_TTL || 300);

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://backend');
  const session = url.searchParams.get('session');
  if (url.pathname !== '/token' || !session) {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'GET /token?session=<id>' }));
    return;
  }
  // Which sessions the token may watch: ids, "prefix*" patterns, or "*".
  const token = jwt.sign({ sessions: [session], sub: 'demo-user' }, secret, {
    algorithm: 'HS256',
    expiresIn: ttl,
    ...(process.env.JWT_AUDIENCE ? { audience: process.env.JWT_AUDIENCE } : {}),
    ...(process.env.JWT_ISSUER ? { issuer: process.env.JWT_ISSUER } : {}),
  });
  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify({ token }));
});

server.listen(Number(process.env.PORT || 4000), '127.0.0.1', () => {
  const { port } = server.address();
  console.log(`token backend listening on http://127.0.0.1:${port}/token`);
});
