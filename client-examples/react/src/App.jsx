// A small page on top of useSessionEvents: progress bar, model results,
// clarifications and a "Completed" banner for one herald session, each event
// once whatever the connection does (the hook resumes after every reconnect),
// with a line saying how many events arrived, how many were missed, and how
// the last (re)subscription went.
//
//   ?session=doc-42                          the session to watch
//   ?session=doc-42&herald=http://host:3000  herald's URL (default http://localhost:3000)
//
// "Stop watching" unmounts <SessionView>, so the hook's cleanup sends
// `unsubscribe` and disconnects; watching another session re-runs the hook's
// effect (cleanup for the old session first).
import { useState } from 'react';
import { useSessionEvents } from './useSessionEvents';

const params = new URLSearchParams(window.location.search);
const heraldUrl = params.get('herald') || 'http://localhost:3000';

function percent(value) {
  return Math.round(Number(value) * 10) / 10;
}

/** How the latest (re)subscription went, in words. */
function describeSubscription(s) {
  if (s.since === undefined) return `snapshot at seq ${s.seq}`;
  const how = s.recovered ? 'nothing lost' : `lost: ${s.reason}`;
  return `resumed after seq ${s.since}: ${s.replayed} replayed, ${how}`;
}

function SessionView({ sessionId, url }) {
  // since: 0 replays all the history herald holds, so a page opened late
  // still lists every model result (without it: herald's snapshot, the
  // latest progress and the end).
  const { socket, isConnected, progress, modelResults, clarifications, isCompleted, error, subscription, lost, stats } =
    useSessionEvents(sessionId, { url, since: 0 });
  const pct = progress ? percent(progress.progress) : 0;
  const p = progress?.prompts;

  return (
    <>
      <div id="connection" className="connection" data-state={isConnected ? 'connected' : 'connecting'}>
        {isConnected ? `Connected as ${socket?.id}` : 'Connecting…'}
      </div>

      <div id="delivery" className="muted">
        events received <span id="received">{stats.received}</span> · missed <span id="missed">{stats.missed}</span>
        {subscription && (
          <>
            {' · '}
            <span id="resume">{describeSubscription(subscription)}</span>
          </>
        )}
      </div>
      {lost && (
        // herald no longer has some events: say so. (A real app would reload
        // what it shows from its own backend here.)
        <div id="lost" className="banner lost" role="alert">
          Some events of this session are no longer available ({lost.reason}): what is shown may be incomplete.
        </div>
      )}

      {isCompleted && (
        <div id="completed" className="banner completed" role="status">
          Completed
        </div>
      )}
      {error && (
        <div id="failed" className="banner failed" role="alert" data-testid="error">
          {error.code ? `Bad request: ${error.error}` : `Failed: ${error.error}`}
        </div>
      )}

      <section>
        <h2>Progress</h2>
        <div className="progress-row">
          <progress id="progress" max="100" value={pct} />
          <span id="progress-percent">{pct}%</span>
        </div>
        <div className="muted" id="progress-status">
          {progress
            ? `Status: ${progress.status} · prompts ${p.completed}/${p.total} completed, ${p.processing} processing, ` +
              `${p.pending} pending, ${p.failed} failed` +
              (progress.hasClarifications ? ` · ${progress.clarificationCount} clarification(s)` : '')
            : 'Waiting for the first progress event…'}
        </div>
      </section>

      <section>
        <h2>Model results</h2>
        {modelResults.length === 0 ? (
          <div className="empty">None yet</div>
        ) : (
          <ul id="model-results" className="cards">
            {modelResults.map((r, i) => (
              <li key={`${r.seq}-${i}`} data-testid="model-result" data-status={r.status}>
                <div>
                  <strong className="model-name">{r.modelName}</strong>
                  <span className={`badge ${r.status}`}>{r.status}</span>
                  <span className="muted">
                    {'  '}
                    {[r.provider, `${r.duration} ms`].filter(Boolean).join(' · ')}
                  </span>
                </div>
                {r.status === 'completed' && <div className="model-output">{r.result}</div>}
                {r.status !== 'completed' && r.error && <div className="model-error">Error: {r.error}</div>}
              </li>
            ))}
          </ul>
        )}
      </section>

      <section>
        <h2>Clarifications</h2>
        {clarifications.length === 0 ? (
          <div className="empty">None yet</div>
        ) : (
          <ul id="clarifications" className="cards">
            {clarifications.map((c, i) => (
              <li key={`${c.seq}-${i}`} data-testid="clarification">
                <div className="question">
                  {c.question}
                  <span className={`badge ${c.status}`}>{c.status}</span>
                </div>
                <div className="muted">id {c.clarificationId}</div>
              </li>
            ))}
          </ul>
        )}
      </section>
    </>
  );
}

export default function App() {
  const [sessionId, setSessionId] = useState(params.get('session') || '');
  const [watching, setWatching] = useState(Boolean(params.get('session')));
  const [draft, setDraft] = useState(sessionId);

  function watch(event) {
    event.preventDefault();
    const id = draft.trim();
    if (!id) return;
    setSessionId(id);
    setWatching(true);
    const next = new URLSearchParams(window.location.search);
    next.set('session', id);
    window.history.replaceState(null, '', `?${next}`);
  }

  return (
    <main>
      <h1>
        herald session <code id="session-id">{watching ? sessionId : '–'}</code>
      </h1>
      <div className="muted">
        server <code id="herald-url">{heraldUrl}</code> · React {'+'} useSessionEvents
      </div>
      <form className="controls" onSubmit={watch}>
        <input
          type="text"
          name="session"
          aria-label="session id"
          placeholder="session id, e.g. doc-42"
          value={draft}
          onChange={(e) => setDraft(e.target.value)}
        />
        <button type="submit" id="watch">
          Watch
        </button>
        {watching && (
          <button type="button" id="stop" onClick={() => setWatching(false)}>
            Stop watching
          </button>
        )}
      </form>

      {watching ? (
        <SessionView sessionId={sessionId} url={heraldUrl} />
      ) : (
        <p className="muted" id="not-watching">
          Not watching any session. Enter a session id, then publish to it, e.g.{' '}
          <code>node client-examples/node/simulate-session.mjs doc-42</code>.
        </p>
      )}
    </main>
  );
}
