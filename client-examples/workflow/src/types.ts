// The frame MeatyMusic's backend sends on its workflow stream (seed 003's
// WorkflowEvent), shared by the hook that reads it and the store that keeps it.

// As the backend sends it (pydantic's model, through FastAPI's send_json),
// an optional field left out arrives as null.
export interface WorkflowEvent {
  ts: string;
  run_id: string;
  node_name?: string | null;
  phase: 'start' | 'end' | 'fail';
  duration_ms?: number | null;
  data?: {
    scores?: Record<string, number>;
    error_message?: string;
    artifacts?: Record<string, unknown>;
    [key: string]: unknown;
  } | null;
  request_id: string;
}
