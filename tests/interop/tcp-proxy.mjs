// A TCP proxy in front of herald whose connections a test cuts (and whose
// new connections it refuses) at will: a dropped network, as a client sees
// it, without touching the client. Shared by the Node and browser suites.

import { once } from 'node:events';
import net from 'node:net';

const HOST = '127.0.0.1';

/** A TCP proxy to `port` whose connections the test cuts (and refuses) at will. */
export async function startProxy(port) {
  const pairs = new Set();
  let down = false;
  const server = net.createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    const upstream = net.connect(port, HOST);
    const pair = [client, upstream];
    pairs.add(pair);
    const close = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const end of pair) end.on('error', close).on('close', close);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.listen(0, HOST);
  await once(server, 'listening');
  return {
    url: `http://${HOST}:${server.address().port}`,
    /** Close every connection through the proxy; refuse new ones until up(). */
    down() {
      down = true;
      for (const pair of pairs) for (const end of pair) end.destroy();
      pairs.clear();
    },
    /** Accept connections again, to herald on `to` (another herald) or the same one. */
    up(to = port) {
      port = to;
      down = false;
    },
    close() {
      this.down();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
