// The workflow store seed 003's useWorkflowWebSocket writes into (there a
// zustand store; here the same selector API on useSyncExternalStore, to keep
// the example's dependencies at React alone): per run, its status, the
// node running now, each node's state, and every event received.
import { useSyncExternalStore } from 'react';
import type { WorkflowEvent } from '../types';

export type Status = 'pending' | 'running' | 'completed' | 'failed';

export interface NodeState {
  status: Status;
  durationMs?: number;
  error?: string;
}

export interface WorkflowRun {
  runId: string;
  status: Status;
  currentNode?: string;
  nodes: Map<string, NodeState>;
  events: WorkflowEvent[];
}

interface State {
  runs: Map<string, WorkflowRun>;
  getRun: (runId: string) => WorkflowRun | undefined;
  addEvent: (runId: string, event: WorkflowEvent) => void;
  updateNodeStatus: (runId: string, nodeId: string, node: NodeState) => void;
  updateRunStatus: (runId: string, status: Status) => void;
}

const listeners = new Set<() => void>();
let state: State;

// Every change makes a new run object (and a new state), so selectors see it.
function change(runId: string, update: (run: WorkflowRun) => WorkflowRun) {
  const runs = new Map(state.runs);
  const run = runs.get(runId) ?? { runId, status: 'pending', nodes: new Map(), events: [] };
  runs.set(runId, update(run));
  state = { ...state, runs };
  listeners.forEach((l) => l());
}

state = {
  runs: new Map(),
  getRun: (runId) => state.runs.get(runId),
  addEvent: (runId, event) => change(runId, (run) => ({ ...run, events: [...run.events, event] })),
  updateNodeStatus: (runId, nodeId, node) =>
    change(runId, (run) => ({
      ...run,
      nodes: new Map(run.nodes).set(nodeId, node),
      currentNode: node.status === 'running' ? nodeId : run.currentNode === nodeId ? undefined : run.currentNode,
    })),
  updateRunStatus: (runId, status) => change(runId, (run) => ({ ...run, status })),
};

export const workflowStore = {
  getState: () => state,
  subscribe: (listener: () => void) => {
    listeners.add(listener);
    return () => listeners.delete(listener);
  },
};

export function useWorkflowStore<T>(selector: (s: State) => T): T {
  return useSyncExternalStore(workflowStore.subscribe, () => selector(state));
}
