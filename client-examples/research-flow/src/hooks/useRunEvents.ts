// ResearchFlow's useRunEvents (services/web/src/hooks/useRunEvents.ts in
// seeds 000-002): run events from the `/ws` WebSocket as React callbacks.
// The seeds document its API (options, return value, ConnectionState,
// reconnection with exponential backoff, auth on open, subscribe and
// subscribe_category that also tell the server); this is that hook, pointed
// at herald. The one change for herald is the server URL, in
// getWebSocketUrl() below: `?herald=http://host:3000` on the page, else the
// seed's VITE_WEBSOCKET_URL, else its default (this page's host, `/ws`).
import { useCallback, useEffect, useRef, useState } from 'react';

export enum ConnectionState {
  DISCONNECTED = 'DISCONNECTED',
  CONNECTING = 'CONNECTING',
  CONNECTED = 'CONNECTED',
  RECONNECTING = 'RECONNECTING',
  ERROR = 'ERROR',
}

export interface RunEvent<T = Record<string, unknown>> {
  type: string;
  timestamp: string;
  payload: T;
  seq?: number;
}

export type EventHandler<T = Record<string, unknown>> = (event: RunEvent<T>) => void;

export interface UseRunEventsOptions {
  runId?: string;
  projectId?: string;
  userId?: string;
  eventTypes?: string[];
  eventCategories?: string[];
  onError?: (error: Error) => void;
  autoConnect?: boolean;
  reconnectAttempts?: number;
  reconnectDelay?: number;
}

export interface UseRunEventsReturn {
  isConnected: boolean;
  connectionState: ConnectionState;
  error: Error | null;
  subscribe: (eventType: string, handler: EventHandler) => () => void;
  unsubscribe: (eventType: string, handler: EventHandler) => void;
  subscribe_category: (category: string, handler: EventHandler) => () => void;
  unsubscribe_category: (category: string, handler: EventHandler) => void;
  reconnect: () => void;
  disconnect: () => void;
}

export const EventCategories: Record<string, string[]> = {
  RUN_EVENTS: ['run.created', 'run.started', 'run.completed', 'run.failed'],
  STAGE_EVENTS: ['stage.started', 'stage.progress', 'stage.completed', 'stage.failed'],
  ARTIFACT_EVENTS: ['artifact.created'],
  GOVERNANCE_EVENTS: ['governance.required', 'approval.granted', 'approval.denied'],
};
EventCategories.ALL_EVENTS = Object.values(EventCategories).flat();

// Server messages that answer the client; everything else is an event.
const CONTROL_TYPES = new Set([
  'connection.established',
  'pong',
  'auth.success',
  'auth.failed',
  'subscription.added',
  'subscription.removed',
  'status',
  'error',
]);

function getWebSocketUrl(): string {
  const herald = new URLSearchParams(window.location.search).get('herald');
  if (herald) return `${herald.replace(/^http/, 'ws').replace(/\/$/, '')}/ws`;
  const configured = import.meta.env?.VITE_WEBSOCKET_URL as string | undefined;
  if (configured) return configured;
  const protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${protocol}//${window.location.host}/ws`;
}

const debug = (...args: unknown[]) => {
  if (localStorage.getItem('debug')?.startsWith('websocket')) console.debug('[useRunEvents]', ...args);
};

export function useRunEvents(options: UseRunEventsOptions = {}): UseRunEventsReturn {
  const {
    runId,
    projectId,
    userId,
    eventTypes = [],
    eventCategories = [],
    autoConnect = true,
    reconnectAttempts = 5,
    reconnectDelay = 1000,
  } = options;

  const [connectionState, setConnectionState] = useState<ConnectionState>(ConnectionState.DISCONNECTED);
  const [error, setError] = useState<Error | null>(null);

  const wsRef = useRef<WebSocket | null>(null);
  const typeHandlers = useRef(new Map<string, Set<EventHandler>>());
  const categoryHandlers = useRef(new Map<string, Set<EventHandler>>());
  const attemptRef = useRef(0);
  const timerRef = useRef<ReturnType<typeof setTimeout> | null>(null);
  const manualClose = useRef(false);
  const onErrorRef = useRef(options.onError);
  onErrorRef.current = options.onError;
  const initial = useRef({ eventTypes, eventCategories });

  const send = useCallback((message: object) => {
    const ws = wsRef.current;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }, []);

  const fail = useCallback((e: Error) => {
    setError(e);
    onErrorRef.current?.(e);
  }, []);

  const dispatch = useCallback((event: RunEvent) => {
    typeHandlers.current.get(event.type)?.forEach((h) => h(event));
    for (const [category, handlers] of categoryHandlers.current) {
      if (EventCategories[category]?.includes(event.type)) handlers.forEach((h) => h(event));
    }
  }, []);

  // What the server should filter to: every type and category with a handler.
  const resubscribeAll = useCallback(() => {
    for (const eventType of typeHandlers.current.keys()) send({ type: 'subscribe', payload: { eventType } });
    for (const eventCategory of categoryHandlers.current.keys()) send({ type: 'subscribe', payload: { eventCategory } });
    for (const eventType of initial.current.eventTypes) send({ type: 'subscribe', payload: { eventType } });
    for (const eventCategory of initial.current.eventCategories) send({ type: 'subscribe', payload: { eventCategory } });
  }, [send]);

  const connect = useCallback(() => {
    if (wsRef.current && wsRef.current.readyState <= WebSocket.OPEN) return;
    manualClose.current = false;
    setConnectionState(attemptRef.current > 0 ? ConnectionState.RECONNECTING : ConnectionState.CONNECTING);
    const url = getWebSocketUrl();
    debug('connecting to', url);
    const ws = new WebSocket(url);
    wsRef.current = ws;

    ws.onopen = () => {
      attemptRef.current = 0;
      setConnectionState(ConnectionState.CONNECTED);
      setError(null);
      if (userId || projectId || runId) send({ type: 'auth', payload: { userId, projectId, runId } });
      resubscribeAll();
    };
    ws.onmessage = (message) => {
      let event: RunEvent;
      try {
        event = JSON.parse(message.data);
      } catch {
        fail(new Error('Failed to parse WebSocket message'));
        return;
      }
      debug('received', event.type, event);
      if (event.type === 'error' || event.type === 'auth.failed') {
        fail(new Error(String((event.payload as { message?: string })?.message ?? event.type)));
        return;
      }
      if (!CONTROL_TYPES.has(event.type)) dispatch(event);
    };
    ws.onerror = () => {
      setConnectionState(ConnectionState.ERROR);
      fail(new Error(`WebSocket error on ${url}`));
    };
    ws.onclose = () => {
      // A socket replaced by reconnect() (or React's StrictMode remount) is old news.
      if (wsRef.current !== ws && wsRef.current !== null) return;
      wsRef.current = null;
      if (manualClose.current) {
        setConnectionState(ConnectionState.DISCONNECTED);
        return;
      }
      if (attemptRef.current >= reconnectAttempts) {
        setConnectionState(ConnectionState.ERROR);
        fail(new Error(`WebSocket closed; gave up after ${reconnectAttempts} reconnect attempts`));
        return;
      }
      const delay = reconnectDelay * 2 ** attemptRef.current;
      attemptRef.current += 1;
      setConnectionState(ConnectionState.RECONNECTING);
      timerRef.current = setTimeout(connect, delay);
    };
  }, [runId, projectId, userId, reconnectAttempts, reconnectDelay, send, resubscribeAll, dispatch, fail]);

  const disconnect = useCallback(() => {
    manualClose.current = true;
    if (timerRef.current) clearTimeout(timerRef.current);
    wsRef.current?.close();
    wsRef.current = null;
    setConnectionState(ConnectionState.DISCONNECTED);
  }, []);

  const reconnect = useCallback(() => {
    disconnect();
    attemptRef.current = 0;
    connect();
  }, [connect, disconnect]);

  useEffect(() => {
    if (autoConnect) connect();
    return () => {
      manualClose.current = true;
      if (timerRef.current) clearTimeout(timerRef.current);
      wsRef.current?.close();
      wsRef.current = null;
    };
  }, [autoConnect, connect]);

  const unsubscribe = useCallback(
    (eventType: string, handler: EventHandler) => {
      const handlers = typeHandlers.current.get(eventType);
      if (!handlers) return;
      handlers.delete(handler);
      if (handlers.size === 0) {
        typeHandlers.current.delete(eventType);
        send({ type: 'unsubscribe', payload: { eventType } });
      }
    },
    [send],
  );

  const subscribe = useCallback(
    (eventType: string, handler: EventHandler) => {
      let handlers = typeHandlers.current.get(eventType);
      if (!handlers) {
        handlers = new Set();
        typeHandlers.current.set(eventType, handlers);
        send({ type: 'subscribe', payload: { eventType } });
      }
      handlers.add(handler);
      return () => unsubscribe(eventType, handler);
    },
    [send, unsubscribe],
  );

  const unsubscribe_category = useCallback(
    (category: string, handler: EventHandler) => {
      const handlers = categoryHandlers.current.get(category);
      if (!handlers) return;
      handlers.delete(handler);
      if (handlers.size === 0) {
        categoryHandlers.current.delete(category);
        send({ type: 'unsubscribe', payload: { eventCategory: category } });
      }
    },
    [send],
  );

  const subscribe_category = useCallback(
    (category: string, handler: EventHandler) => {
      let handlers = categoryHandlers.current.get(category);
      if (!handlers) {
        handlers = new Set();
        categoryHandlers.current.set(category, handlers);
        send({ type: 'subscribe', payload: { eventCategory: category } });
      }
      handlers.add(handler);
      return () => unsubscribe_category(category, handler);
    },
    [send, unsubscribe_category],
  );

  return {
    isConnected: connectionState === ConnectionState.CONNECTED,
    connectionState,
    error,
    subscribe,
    unsubscribe,
    subscribe_category,
    unsubscribe_category,
    reconnect,
    disconnect,
  };
}
