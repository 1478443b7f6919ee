// useSessionEvents: a herald session as React state, with nothing lost or
// shown twice across reconnects. Built on watchSession
// (client-examples/resume/herald-resume.js), which remembers the session's
// last seq and epoch and resubscribes with them on every reconnect.
//
//   const { isConnected, progress, modelResults, clarifications, isCompleted, error,
//           subscription, lost, stats } = useSessionEvents(sessionId, { url, since: 0 });
//
// One socket per session, like the seed document's hook: opened when the
// effect starts, unsubscribed and closed in its cleanup (unmount, or another
// sessionId/url). State starts afresh for each session.
// - `subscription`: herald's answer to the latest (re)subscription
//   ({ seq, epoch, since, recovered, replayed, reason });
// - `lost`: set when herald said `recovered: false`. With reason
//   "epoch_changed" herald lost the session and replays it from its new
//   start, so the state is rebuilt from that; with "history_truncated" some
//   events are gone for good and the page should say so (or reload);
// - `stats`: { received, duplicates, missed, resyncs } of watchSession.
import { useEffect, useState } from 'react';
import { io, Socket } from 'socket.io-client';
import { watchSession, type SubscribedInfo, type WatchStats } from '../../resume/herald-resume.js';

export interface SessionProgress {
  sessionId: string;
  status: 'ACTIVE' | 'PROCESSING' | 'COMPLETED' | 'FAILED' | 'EXPIRED';
  progress: number; // 0-100
  prompts: {
    total: number;
    completed: number;
    processing: number;
    pending: number;
    failed: number;
  };
  hasClarifications: boolean;
  clarificationCount: number;
  hasResult?: boolean;
  result?: object;
  timestamp: string;
  seq: number;
}

export interface ModelResult {
  sessionId: string;
  modelName: string;
  provider?: string;
  duration: number; // ms
  result: string;
  status: 'processing' | 'completed' | 'failed';
  error?: string;
  timestamp: string;
  seq: number;
}

export interface Clarification {
  sessionId: string;
  clarificationId: string;
  question: string;
  status: 'pending' | 'answered';
  timestamp: string;
  seq: number;
}

export interface SessionError {
  error: string;
  /** Set on a refused request (e.g. INVALID_SESSION_ID); absent on a published session error. */
  code?: string;
  seq?: number;
}

export interface UseSessionEventsOptions {
  /** herald's URL (default http://localhost:3000). */
  url?: string;
  transports?: string[];
  /** Where to start: undefined, herald's snapshot (the latest progress, and the end if any); 0, all the history herald holds. */
  since?: number;
}

const NO_STATS: WatchStats = { received: 0, duplicates: 0, missed: 0, resyncs: 0 };

export function useSessionEvents(sessionId: string | null, options: UseSessionEventsOptions = {}) {
  const { url = 'http://localhost:3000', transports = ['websocket', 'polling'], since } = options;
  const [socket, setSocket] = useState<Socket | null>(null);
  const [isConnected, setIsConnected] = useState(false);
  const [progress, setProgress] = useState<SessionProgress | null>(null);
  const [modelResults, setModelResults] = useState<ModelResult[]>([]);
  const [clarifications, setClarifications] = useState<Clarification[]>([]);
  const [isCompleted, setIsCompleted] = useState(false);
  const [error, setError] = useState<SessionError | null>(null);
  const [subscription, setSubscription] = useState<SubscribedInfo | null>(null);
  const [lost, setLost] = useState<SubscribedInfo | null>(null);
  const [stats, setStats] = useState<WatchStats>(NO_STATS);
  const transportList = transports.join(',');

  useEffect(() => {
    if (!sessionId) return;

    const reset = () => {
      setProgress(null);
      setModelResults([]);
      setClarifications([]);
      setIsCompleted(false);
      setError(null);
    };
    reset();
    setSubscription(null);
    setLost(null);
    setStats(NO_STATS);

    const newSocket = io(url, { path: '/socket.io/', transports: transportList.split(',') });
    newSocket.on('connect', () => setIsConnected(true));
    newSocket.on('disconnect', () => setIsConnected(false));

    // Each event once, in seq order, whatever the connection did.
    const stop = watchSession(
      newSocket,
      sessionId,
      {
        progress: (data) => setProgress(data as unknown as SessionProgress),
        model_result: (data) => setModelResults((prev) => [...prev, data as unknown as ModelResult]),
        clarification: (data) => setClarifications((prev) => [...prev, data as unknown as Clarification]),
        completed: () => setIsCompleted(true),
        error: (data) => setError(data as unknown as SessionError),
        event: () => setStats({ ...stop.stats }),
        subscribed: setSubscription,
        lost: (info) => {
          setLost(info);
          // The events that follow are the session anew: rebuild from them.
          if (info.reason === 'epoch_changed') reset();
        },
        refused: setError,
      },
      { since },
    );
    setSocket(newSocket);

    return () => {
      stop(); // unsubscribe
      newSocket.disconnect();
      setSocket(null);
      setIsConnected(false);
    };
  }, [sessionId, url, transportList, since]);

  return {
    socket,
    isConnected,
    progress,
    modelResults,
    clarifications,
    isCompleted,
    error,
    subscription,
    lost,
    stats,
  };
}
