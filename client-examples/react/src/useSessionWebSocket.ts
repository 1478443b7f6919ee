// The React hook of the WebSocket real-time updates document, against herald.
//
// Same shape as the document's hook: one socket per session, `subscribe` on
// connect (so a reconnect subscribes again), progress / modelResults /
// clarifications / isCompleted as state, and `unsubscribe` + `disconnect` in
// the effect's cleanup (on unmount, or when sessionId or url changes).
//
// Differences from the document, each small:
// - the herald URL is a parameter (default http://localhost:3000);
// - the state is reset when the effect starts, so switching to another
//   session does not show the previous session's results;
// - `isConnected` and `error` (a published session `error` event, or a
//   refused request such as an invalid session id) are returned as well, so a
//   failed session does not look like one still running.
import { useEffect, useState } from 'react';
import { io, Socket } from 'socket.io-client';

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

export function useSessionWebSocket(sessionId: string | null, url: string = 'http://localhost:3000') {
  const [socket, setSocket] = useState<Socket | null>(null);
  const [isConnected, setIsConnected] = useState(false);
  const [progress, setProgress] = useState<SessionProgress | null>(null);
  const [modelResults, setModelResults] = useState<ModelResult[]>([]);
  const [clarifications, setClarifications] = useState<Clarification[]>([]);
  const [isCompleted, setIsCompleted] = useState(false);
  const [error, setError] = useState<SessionError | null>(null);

  useEffect(() => {
    if (!sessionId) return;

    // A new session starts from nothing
    setProgress(null);
    setModelResults([]);
    setClarifications([]);
    setIsCompleted(false);
    setError(null);

    // Initialize socket
    const newSocket = io(url, {
      path: '/socket.io/',
      transports: ['websocket', 'polling'],
    });

    newSocket.on('connect', () => {
      console.log('WebSocket connected');
      setIsConnected(true);
      newSocket.emit('subscribe', sessionId);
    });

    newSocket.on('disconnect', () => {
      setIsConnected(false);
    });

    newSocket.on('progress', (data: SessionProgress) => {
      setProgress(data);
    });

    newSocket.on('model_result', (data: ModelResult) => {
      setModelResults((prev) => [...prev, data]);
    });

    newSocket.on('clarification', (data: Clarification) => {
      setClarifications((prev) => [...prev, data]);
    });

    newSocket.on('completed', () => {
      setIsCompleted(true);
    });

    newSocket.on('error', (data: SessionError) => {
      setError(data);
    });

    setSocket(newSocket);

    // Cleanup
    return () => {
      newSocket.emit('unsubscribe', sessionId);
      newSocket.disconnect();
      setSocket(null);
      setIsConnected(false);
    };
  }, [sessionId, url]);

  return {
    socket,
    isConnected,
    progress,
    modelResults,
    clarifications,
    isCompleted,
    error,
  };
}
