// Restart: herald stops on SIGTERM (exit code 0, promptly), closing the
// transports so that a stock client with default options reconnects by itself
// once herald is back on the same port, re-subscribes in its connect handler
// (as the seed document's client does) and receives new events.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { startHerald, sample, sessionId, isRecentIsoTimestamp, until, assertSubscribed } from './lib/herald.mjs';

const STOP_WITHIN_MS = 5000;
const RECONNECT_WITHIN_MS = 30000;

describe('restart', () => {
  const heralds = [];
  const sockets = [];
  after(async () => {
    for (const s of sockets) s.disconnect();
    for (const h of heralds) await h.kill();
  });

  for (const transport of ['websocket', 'polling']) {
    test(`a default-options ${transport} client reconnects and re-subscribes after SIGTERM + restart`, async (t) => {
      const herald = await startHerald();
      heralds.push(herald);
      const session = sessionId(`restart-${transport}`);

      // The seed's client: defaults except the transport, subscribe on connect.
      const socket = io(herald.url, { transports: [transport] });
      sockets.push(socket);
      const connects = [];
      const disconnects = [];
      const subscribedAt = [];
      const subscribedWith = [];
      const events = [];
      socket.on('connect', () => {
        connects.push({ id: socket.id, at: Date.now() });
        socket.emit('subscribe', session);
      });
      socket.on('disconnect', (reason) => disconnects.push(reason));
      socket.on('subscribed', (d) => {
        if (d.sessionId === session) {
          subscribedAt.push(Date.now());
          subscribedWith.push(d);
        }
      });
      socket.on('clarification', (d) => events.push(d));

      await until(() => subscribedAt.length === 1, { timeoutMs: 10000, what: 'first connect + subscribed' });
      assert.equal(socket.io.engine.transport.name, transport);
      const epochBefore = (await herald.session(session)).epoch;
      assertSubscribed(subscribedWith[0], session, { seq: 0, epoch: epochBefore });
      const before = sample('clarification', { clarificationId: 'before-restart' });
      await herald.publishOk(session, 'clarification', before);
      await until(() => events.length === 1, { timeoutMs: 5000, what: 'the event before the restart' });
      assert.equal(events[0].clarificationId, 'before-restart');

      // SIGTERM: exit code 0, within a few seconds.
      const t0 = Date.now();
      const code = await herald.stop('SIGTERM', { timeoutMs: 15000 });
      const stopMs = Date.now() - t0;
      assert.equal(herald.exitSignal, null, `herald died of ${herald.exitSignal} instead of exiting`);
      assert.equal(code, 0, `exit code after SIGTERM\n${herald.logTail()}`);
      assert.ok(stopMs < STOP_WITHIN_MS, `herald took ${stopMs} ms to exit after SIGTERM`);

      // The client noticed, for a reason that lets it reconnect by itself.
      await until(() => disconnects.length >= 1, { timeoutMs: 10000, what: 'the client to see the disconnect' });
      assert.notEqual(disconnects[0], 'io server disconnect', 'server sent a Socket.IO disconnect: clients will not reconnect');
      assert.notEqual(disconnects[0], 'io client disconnect');
      assert.equal(socket.active, true, 'the client gave up instead of reconnecting');

      // Back on the same port.
      await herald.start();
      assert.equal(herald.url, `http://127.0.0.1:${herald.port}`);
      await until(() => connects.length >= 2 && subscribedAt.length >= 2, {
        timeoutMs: RECONNECT_WITHIN_MS,
        intervalMs: 50,
        what: `the ${transport} client to reconnect and re-subscribe (connects=${connects.length}, disconnect reasons=${JSON.stringify(disconnects)})`,
      });
      assert.equal(connects.length, 2, 'connect fired again exactly once');
      assert.notEqual(connects[1].id, connects[0].id, 'a new socket id after reconnecting');
      assert.equal(socket.io.engine.transport.name, transport);
      const state = await herald.session(session);
      assert.equal(state.subscribers, 1);
      // A memory-mode herald forgets its sessions when it stops: the
      // session starts again at seq 0, in a new epoch.
      assertSubscribed(subscribedWith[1], session, { seq: 0, epoch: state.epoch });
      assert.notEqual(state.epoch, epochBefore, 'the epoch survived a restart that lost the session');

      const afterEvent = sample('clarification', { clarificationId: 'after-restart' });
      const res = await herald.publishOk(session, 'clarification', afterEvent);
      await until(() => events.length >= 2, { timeoutMs: 5000, what: 'the event after the restart' });
      const got = events[1];
      const { sessionId: sid, timestamp, seq, ...rest } = got;
      assert.equal(sid, session);
      assert.equal(seq, res.seq);
      assert.ok(isRecentIsoTimestamp(timestamp));
      assert.deepEqual(rest, afterEvent);
      assert.equal(events.length, 2);

      t.diagnostic(
        `${transport}: exit after SIGTERM in ${stopMs} ms, disconnect reason ${JSON.stringify(disconnects[0])}, ` +
          `reconnected ${connects[1].at - t0} ms after SIGTERM`,
      );
      socket.disconnect();
      assert.equal(await herald.stop('SIGTERM'), 0);
    });
  }
});
