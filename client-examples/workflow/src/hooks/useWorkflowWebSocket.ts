// MeatyMusic's useWorkflowWebSocket (hooks/useWorkflowWebSocket.ts in seed
// 003): the stream of WorkflowEvent frames, parsed, written into the
// workflow store (event history, node status, run status), then handed to
// onEvent. Reconnects after reconnectDelay, at most maxReconnectAttempts
// times, then sets connectionError. The seed's React Query invalidation is
// left out (this example has no API to refetch).
//
// The one change for herald is the server URL, in getWebSocketUrl():
// `?herald=http://host:3000` on the page, else VITE_WS_URL, else this page's
// host; the path is herald's every-run stream, /ws/workflows.
import { useCallback, useEffect, useRef, useState } from 'react';
import { workflowStore } from '../stores/workflowStore';
import type { WorkflowEvent } from '../types';

export type { WorkflowEvent } from '../types';

export interface UseWorkflowWebSocketOptions {
  enabled?: boolean;
  reconnectDelay?: number;
  maxReconnectAttempts?: number;
  onEvent?: (event: WorkflowEvent) => void;
  onError?: (error: Error) => void;
  onConnect?: () => void;
  onDisconnect?: () => void;
}

export interface UseWorkflowWebSocketReturn {
  isConnected: boolean;
  connectionError: string | null;
  disconnect: () => void;
  reconnect: () => void;
}

function getWebSocketUrl(): string {
  const herald = new URLSearchParams(window.location.search).get('herald');
  if (herald) return `${herald.replace(/^http/, 'ws').replace(/\/$/, '')}/ws/workflows`;
  const configured = import.meta.env?.VITE_WS_URL as string | undefined;
  if (configured) return `${configured.replace(/\/$/, '')}/ws/workflows`;
  const protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${protocol}//${window.location.host}/ws/workflows`;
}

const PHASE_STATUS = { start: 'running', end: 'completed', fail: 'failed' } as const;

function processEvent(event: WorkflowEvent) {
  const store = workflowStore.getState();
  store.addEvent(event.run_id, event);
  const status = PHASE_STATUS[event.phase];
  if (event.node_name) {
    store.updateNodeStatus(event.run_id, event.node_name, {
      status,
      durationMs: event.duration_ms ?? undefined,
      error: event.data?.error_message,
    });
  } else {
    store.updateRunStatus(event.run_id, status);
  }
}

export function useWorkflowWebSocket(options: UseWorkflowWebSocketOptions = {}): UseWorkflowWebSocketReturn {
  const { enabled = true, reconnectDelay = 3000, maxReconnectAttempts = 5 } = options;
  const [isConnected, setIsConnected] = useState(false);
  const [connectionError, setConnectionError] = useState<string | null>(null);
  const wsRef = useRef<WebSocket | null>(null);
  const attempts = useRef(0);
  const timer = useRef<ReturnType<typeof setTimeout> | null>(null);
  const closing = useRef(false);
  // The latest callbacks, without reconnecting when they change.
  const callbacks = useRef(options);
  callbacks.current = options;

  const connect = useCallback(() => {
    if (wsRef.current && wsRef.current.readyState <= WebSocket.OPEN) return;
    closing.current = false;
    const ws = new WebSocket(getWebSocketUrl());
    wsRef.current = ws;
    ws.onopen = () => {
      attempts.current = 0;
      setIsConnected(true);
      setConnectionError(null);
      callbacks.current.onConnect?.();
    };
    ws.onmessage = (message) => {
      let event: WorkflowEvent;
      try {
        event = JSON.parse(message.data);
      } catch {
        callbacks.current.onError?.(new Error('Failed to parse WebSocket message'));
        return;
      }
      processEvent(event);
      callbacks.current.onEvent?.(event);
    };
    ws.onerror = () => callbacks.current.onError?.(new Error('WebSocket error'));
    ws.onclose = () => {
      // A socket replaced by reconnect() (or React's StrictMode remount) is old news.
      if (wsRef.current !== ws && wsRef.current !== null) return;
      wsRef.current = null;
      setIsConnected(false);
      callbacks.current.onDisconnect?.();
      if (closing.current) return;
      if (attempts.current >= maxReconnectAttempts) {
        setConnectionError(`Could not reconnect after ${maxReconnectAttempts} attempts`);
        return;
      }
      attempts.current += 1;
      timer.current = setTimeout(connect, reconnectDelay);
    };
  }, [reconnectDelay, maxReconnectAttempts]);

  const disconnect = useCallback(() => {
    closing.current = true;
    if (timer.current) clearTimeout(timer.current);
    wsRef.current?.close();
    wsRef.current = null;
  }, []);

  const reconnect = useCallback(() => {
    disconnect();
    attempts.current = 0;
    connect();
  }, [connect, disconnect]);

  useEffect(() => {
    if (!enabled) return undefined;
    connect();
    return disconnect;
  }, [enabled, connect, disconnect]);

  return { isConnected, connectionError, disconnect, reconnect };
}
