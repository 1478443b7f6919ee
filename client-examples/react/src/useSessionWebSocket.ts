// The seed document's hook, `useSessionWebSocket(sessionId, url)`, kept for
// code written against it: same arguments, same result, now on top of
// useSessionEvents, so it no longer loses what happens while it reconnects.
//
// Migrating is one line, and gives the resume details too:
//
//   - const { socket, progress, modelResults, clarifications, isCompleted } = useSessionWebSocket(id, url);
//   + const { socket, progress, modelResults, clarifications, isCompleted, lost, stats } = useSessionEvents(id, { url });
import { useSessionEvents } from './useSessionEvents';

export type { SessionProgress, ModelResult, Clarification, SessionError } from './useSessionEvents';

export function useSessionWebSocket(sessionId: string | null, url: string = 'http://localhost:3000') {
  const { socket, isConnected, progress, modelResults, clarifications, isCompleted, error } = useSessionEvents(
    sessionId,
    { url },
  );
  return { socket, isConnected, progress, modelResults, clarifications, isCompleted, error };
}
