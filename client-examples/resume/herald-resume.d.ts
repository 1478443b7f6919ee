// Types of herald-resume.js, for TypeScript code (the React hook) and editors.

/** The session events herald delivers, each with sessionId, timestamp and seq. */
export type SessionEventName = 'progress' | 'model_result' | 'clarification' | 'completed' | 'error';
export declare const SESSION_EVENTS: readonly SessionEventName[];

/** A session event's payload: the backend's fields plus herald's. */
export interface SessionEvent {
  sessionId: string;
  timestamp: string;
  seq: number;
  [field: string]: unknown;
}

/** What a (re)subscription found: herald's `subscribed` reply. */
export interface SubscribedInfo {
  sessionId: string;
  /** The session's last seq when the subscription took effect. */
  seq: number;
  epoch: string;
  /** The seq resumed after; undefined for a snapshot (the first subscribe). */
  since?: number;
  /** With `since`: false when herald no longer has everything after it. */
  recovered?: boolean;
  /** With `since`: how many events herald replays. */
  replayed?: number;
  reason?: 'history_truncated' | 'epoch_changed';
}

export interface Refusal {
  ok: false;
  error: string;
  code: string;
}

export interface WatchHandlers {
  progress?(data: SessionEvent): void;
  model_result?(data: SessionEvent): void;
  clarification?(data: SessionEvent): void;
  completed?(data: SessionEvent): void;
  error?(data: SessionEvent): void;
  /** Every session event, after its own handler. */
  event?(name: SessionEventName, data: SessionEvent): void;
  subscribed?(info: SubscribedInfo): void;
  /** recovered: false, before the events herald still has. */
  lost?(info: SubscribedInfo): void;
  refused?(reply: Refusal): void;
}

export interface WatchOptions {
  /** sessionStorage, localStorage, or anything with getItem/setItem. */
  storage?: Pick<Storage, 'getItem' | 'setItem'> | null;
  storageKey?: string;
  /** Where to start when nothing is stored: undefined (a snapshot) or a seq (0: all held history). */
  since?: number;
  token?: string;
  /** How long to wait for herald's answer to a subscribe before asking again (default 10000). */
  answerTimeoutMs?: number;
}

export interface WatchStats {
  received: number;
  duplicates: number;
  missed: number;
  resyncs: number;
}

/** Removes the listeners and unsubscribes; resolves once herald acknowledged (at most 5 s). */
export interface StopWatching {
  (): Promise<void>;
  readonly stats: WatchStats;
  readonly position: { seq: number | null; epoch: string | null };
}

/** The part of a socket.io-client Socket that watchSession uses. */
export interface SocketLike {
  connected: boolean;
  on(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener: (...args: any[]) => void): unknown;
  emit(event: string, ...args: any[]): unknown;
  timeout(ms: number): { emit(event: string, ...args: any[]): unknown };
}

export declare function watchSession(
  socket: SocketLike,
  sessionId: string,
  handlers?: WatchHandlers,
  options?: WatchOptions,
): StopWatching;
