// Watch one herald session that requires tokens, with the stock
// socket.io-client. The `auth` option is a callback, so socket.io-client asks
// for a fresh token every time it connects, reconnects included: when the
// token expires herald closes the transport, the client reconnects, the
// callback fetches a new token, and the connect handler subscribes again.
//
//   TOKEN_URL=http://127.0.0.1:4000/token HERALD_URL=http://localhost:3000 \
//     node watch-with-token.mjs <session-id>
//
// Prints every session event; after `completed` it disconnects and exits 0.

import { io } from 'socket.io-client';

const url = process.env.HERALD_URL || 'http://localhost:3000';
const tokenUrl = process.env.TOKEN_URL || 'http://127.0.0.1:4000/token';
const sessionId = process.argv[2] || process.env.SESSION_ID;
if (!sessionId) {
  console.error('usage: node watch-with-token.mjs <session-id>   (or set SESSION_ID)');
  process.exit(2);
}

const socket = io(url, {
  transports: ['websocket', 'polling'],
  // Called before every connection attempt: a token fetched now is fresh.
  auth: (cb) => {
    fetch(`${tokenUrl}?session=${encodeURIComponent(sessionId)}`)
      .then((res) => res.json())
      .then(({ token }) => cb({ token }))
      .catch((err) => {
        console.error('could not fetch a token:', err.message);
        cb({});
      });
  },
});

// Subscribe in the connect handler, so a reconnect subscribes again; `since`
// (the last seq seen) resumes without missing anything.
let lastSeq;
socket.on('connect', () => {
  console.log('Connected:', socket.id);
  socket.emit('subscribe', { sessionId, since: lastSeq });
});

socket.on('subscribed', (data) => console.log('Subscribed to session:', data.sessionId, 'at seq', data.seq));

// A refused token: the message says why (expired, bad signature, ...).
socket.on('connect_error', (err) => console.error('Connection refused:', err.message));

// "transport close" when the token expired: socket.io-client reconnects.
socket.on('disconnect', (reason) => console.log('Disconnected:', reason));

socket.on('error', (data) => {
  if (data.code === 'FORBIDDEN') console.error('Not allowed:', data.error);
  else console.log('error:', data);
});

for (const event of ['progress', 'model_result', 'clarification']) {
  socket.on(event, (data) => {
    lastSeq = data.seq;
    console.log(`${event} #${data.seq}:`, JSON.stringify(data));
  });
}

socket.on('completed', (data) => {
  console.log('Session completed:', JSON.stringify(data.result));
  socket.disconnect();
  process.exit(0);
});
