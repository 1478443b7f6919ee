// A ResearchFlow run monitor on the seed's useRunEvents hook, written the way
// the seed's QUICKSTART writes its components (subscribe_category in an
// effect, the returned function as cleanup): the run's status badge, a
// progress bar per stage, the artifacts produced, the governance prompts and
// their decisions, and the event log.
//
//   ?run=run-123                              the run to watch (auth'd as its runId)
//   ?run=run-123&herald=http://host:3000      herald's URL (default: this page's host)
//   &project=proj-456&user=user-789           also named in the auth message
//
// Drive it with `node publish-run.mjs --run run-123` (see README.md).
import { useEffect, useState } from 'react';
import { useRunEvents } from './hooks/useRunEvents';

const params = new URLSearchParams(window.location.search);

const STATUS = {
  'run.created': 'created',
  'run.started': 'running',
  'run.completed': 'completed',
  'run.failed': 'failed',
};

function RunMonitor({ runId, projectId, userId }) {
  const [status, setStatus] = useState('idle');
  const [failure, setFailure] = useState(null);
  const [stages, setStages] = useState([]);
  const [artifacts, setArtifacts] = useState([]);
  const [governance, setGovernance] = useState([]);
  const [log, setLog] = useState([]);

  const { isConnected, connectionState, error, subscribe_category } = useRunEvents({ runId, projectId, userId });

  useEffect(() => {
    return subscribe_category('RUN_EVENTS', (event) => {
      setStatus(STATUS[event.type]);
      if (event.type === 'run.failed') setFailure(event.payload.errorCode);
    });
  }, [subscribe_category]);

  useEffect(() => {
    return subscribe_category('STAGE_EVENTS', ({ type, payload }) => {
      setStages((prev) => {
        const old = prev.find((s) => s.stageId === payload.stageId);
        const stage = { progress: 0, state: 'running', ...old, stageId: payload.stageId, stageName: payload.stageName };
        if (payload.stageNumber !== undefined) stage.stageNumber = payload.stageNumber;
        if (payload.totalStages !== undefined) stage.totalStages = payload.totalStages;
        if (type === 'stage.progress') {
          stage.progress = payload.progress;
          stage.statusMessage = payload.statusMessage;
        } else if (type === 'stage.completed') {
          stage.progress = 100;
          stage.state = 'completed';
          stage.durationMs = payload.durationMs;
        } else if (type === 'stage.failed') {
          stage.state = 'failed';
          stage.errorCode = payload.errorCode;
        }
        const next = old ? prev.map((s) => (s === old ? stage : s)) : [...prev, stage];
        return next.sort((a, b) => (a.stageNumber ?? 1e9) - (b.stageNumber ?? 1e9));
      });
    });
  }, [subscribe_category]);

  useEffect(() => {
    return subscribe_category('ARTIFACT_EVENTS', ({ payload }) => setArtifacts((prev) => [...prev, payload]));
  }, [subscribe_category]);

  useEffect(() => {
    return subscribe_category('GOVERNANCE_EVENTS', ({ type, payload }) => {
      setGovernance((prev) => {
        if (type === 'governance.required') return [...prev, { ...payload, decision: 'pending' }];
        const decision = type === 'approval.granted' ? 'granted' : 'denied';
        return prev.map((g) =>
          g.governanceId === payload.governanceId
            ? { ...g, decision, by: payload.grantedBy ?? payload.deniedBy, reason: payload.reason, canRetry: payload.canRetry }
            : g,
        );
      });
    });
  }, [subscribe_category]);

  useEffect(() => {
    return subscribe_category('ALL_EVENTS', (event) => setLog((prev) => [...prev, event]));
  }, [subscribe_category]);

  return (
    <>
      <div className="row">
        <span id="connection" className="connection" data-state={isConnected ? 'connected' : 'connecting'}>
          {isConnected ? 'Connected' : connectionState}
        </span>
        <span id="run-status" className={`status ${status}`} data-status={status}>
          {status.toUpperCase()}
        </span>
      </div>
      {failure && (
        <div id="run-failed" className="banner failed" role="alert">
          Run failed: {failure}
        </div>
      )}
      {error && <div id="hook-error" className="muted">{error.message}</div>}

      <section>
        <h2>Stages</h2>
        {stages.length === 0 ? (
          <div className="empty">No stage started yet</div>
        ) : (
          <ul className="cards">
            {stages.map((s) => (
              <li key={s.stageId} data-testid="stage" data-state={s.state}>
                <div>
                  <strong className="stage-name">{s.stageName}</strong>
                  {s.stageNumber !== undefined && (
                    <span className="muted">
                      {' '}
                      {s.stageNumber}/{s.totalStages ?? '?'}
                    </span>
                  )}
                  <span className={`badge ${s.state}`}>{s.state}</span>
                </div>
                <div className="progress-row">
                  <progress max="100" value={s.progress} />
                  <span className="stage-percent">{s.progress}%</span>
                </div>
                {s.statusMessage && <div className="muted">{s.statusMessage}</div>}
                {s.errorCode && <div className="model-error">Error: {s.errorCode}</div>}
              </li>
            ))}
          </ul>
        )}
      </section>

      <section>
        <h2>Artifacts</h2>
        {artifacts.length === 0 ? (
          <div className="empty">None yet</div>
        ) : (
          <ul className="cards">
            {artifacts.map((a, i) => (
              <li key={`${a.artifactId}-${i}`} data-testid="artifact">
                <code className="artifact-id">{a.artifactId}</code>
                <span className="badge">{a.artifactType}</span>
              </li>
            ))}
          </ul>
        )}
      </section>

      <section>
        <h2>Governance</h2>
        {governance.length === 0 ? (
          <div className="empty">No approval needed</div>
        ) : (
          <ul className="cards">
            {governance.map((g) => (
              <li key={g.governanceId} data-testid="governance" data-decision={g.decision}>
                <div>
                  <strong>{g.governanceType}</strong> approval{' '}
                  {g.decision === 'pending' ? 'required' : `${g.decision} by ${g.by}`}
                  <span className={`badge ${g.decision}`}>{g.priority}</span>
                </div>
                {g.decision === 'pending' && g.assignedTo && (
                  <div className="muted">assigned to {g.assignedTo.join(', ')}</div>
                )}
                {g.reason && <div className="model-error">{g.reason}</div>}
              </li>
            ))}
          </ul>
        )}
      </section>

      <section>
        <h2>
          Events <span id="event-count">{log.length}</span>
        </h2>
        <ol id="event-log" className="log">
          {log.map((e, i) => (
            <li key={i} data-testid="event">
              <time>{new Date(e.timestamp).toLocaleTimeString()}</time> <strong>{e.type}</strong>
              {e.seq !== undefined && <span className="muted"> #{e.seq}</span>}
            </li>
          ))}
        </ol>
      </section>
    </>
  );
}

export default function App() {
  const runId = params.get('run');
  return (
    <main>
      <h1>
        Run <code id="run-id">{runId ?? '–'}</code>
      </h1>
      <div className="muted">ResearchFlow run monitor · useRunEvents over herald's /ws</div>
      {runId ? (
        <RunMonitor runId={runId} projectId={params.get('project') ?? undefined} userId={params.get('user') ?? undefined} />
      ) : (
        <p className="muted">
          Add <code>?run=run-123</code> to the address, then <code>node publish-run.mjs --run run-123</code>.
        </p>
      )}
    </main>
  );
}
