// A MeatyMusic workflow timeline on the seed's useWorkflowWebSocket: the
// hook writes every WorkflowEvent into the workflow store, and this page
// reads one run from it (as seed 003's WorkflowStatus does): the run's
// status, the node running now, one row per node in the order they started
// with its status and duration (or error), and the event log.
//
//   ?run=run-123                           the run to show
//   ?run=run-123&herald=http://host:3000   herald's URL (default: this page's host)
//
// Drive it with `node publish-workflow.mjs --run run-123` (see README.md).
import { useWorkflowWebSocket } from './hooks/useWorkflowWebSocket';
import { useWorkflowStore } from './stores/workflowStore';

const params = new URLSearchParams(window.location.search);

function Timeline({ runId }) {
  const { isConnected, connectionError } = useWorkflowWebSocket({ enabled: true });
  const run = useWorkflowStore((state) => state.getRun(runId));
  const status = run?.status ?? 'pending';

  return (
    <>
      <div className="row">
        <span id="connection" className="connection" data-state={isConnected ? 'connected' : 'connecting'}>
          {isConnected ? 'Live' : 'Offline'}
        </span>
        <span id="run-status" className={`status ${status === 'running' ? 'running' : status}`} data-status={status}>
          {status.toUpperCase()}
        </span>
        <span className="muted">
          current node <code id="current-node">{run?.currentNode ?? 'none'}</code>
        </span>
      </div>
      {connectionError && <div className="banner failed">Error: {connectionError}</div>}

      <section>
        <h2>Nodes</h2>
        {!run || run.nodes.size === 0 ? (
          <div className="empty">No node started yet</div>
        ) : (
          <ol className="cards timeline">
            {[...run.nodes.entries()].map(([name, node]) => (
              <li key={name} data-testid="node" data-status={node.status}>
                <strong className="node-name">{name}</strong>
                <span className={`badge ${node.status}`}>{node.status}</span>
                {node.durationMs != null && <span className="muted node-duration"> {node.durationMs} ms</span>}
                {node.error && <div className="model-error">{node.error}</div>}
              </li>
            ))}
          </ol>
        )}
      </section>

      <section>
        <h2>
          Events <span id="event-count">{run?.events.length ?? 0}</span>
        </h2>
        <ol id="event-log" className="log">
          {(run?.events ?? []).map((e, i) => (
            <li key={i} data-testid="event">
              <time>{new Date(e.ts).toLocaleTimeString()}</time> - <strong>{e.node_name || 'workflow'}</strong>{' '}
              <span className={`phase ${e.phase}`}>{e.phase}</span>
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
        Workflow <code id="run-id">{runId ?? '–'}</code>
      </h1>
      <div className="muted">MeatyMusic workflow timeline · useWorkflowWebSocket over herald's /ws/workflows</div>
      {runId ? (
        <Timeline runId={runId} />
      ) : (
        <p className="muted">
          Add <code>?run=run-123</code> to the address, then <code>node publish-workflow.mjs --run run-123</code>.
        </p>
      )}
    </main>
  );
}
