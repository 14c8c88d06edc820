/**
 * `agentwire/client`: a typed client of protocol v1 for browsers and Node 24
 * (the global `WebSocket`; no Node-only imports, no server code).
 *
 * What it does for you:
 * - connects with a token offered as the subprotocol `jwt.<token>` beside
 *   `agentwire.v1` (browsers cannot set headers, and URLs get logged);
 * - reconnects with jittered exponential backoff (`reconnect`), and on every
 *   reconnect sends `resume_run {after_seq}` for each run it follows that has not
 *   ended, from the highest `seq` up to which it has every event;
 * - per run, delivers each event exactly once and in `seq` order: events that
 *   arrive early (a fresh connection gets live events before its replay, §5.2)
 *   are held until the gap fills, and anything seen before, keyed by
 *   `(run_id, seq)`, is dropped;
 * - compares `server_epoch` on every connection: another epoch means the
 *   server's run log is gone, and every unfinished run ends with a
 *   {@link RunLostError} instead of waiting forever;
 * - puts a `request_id` on every command and re-sends unanswered commands after
 *   a reconnect: within one `server_epoch` a retried start is answered
 *   `run_accepted {duplicate: true}` and never runs the agent twice; an
 *   unanswered start across an epoch change is failed with
 *   `CommandError("OUTCOME_UNKNOWN")` instead (the new server cannot tell
 *   whether it ran, so re-sending could run it twice);
 * - refuses, without sending, a command whose encoded size is over the
 *   server's `max_message_bytes` (`CommandError("MESSAGE_TOO_LARGE")`);
 * - resumes at most {@link MAX_RESUMES_IN_FLIGHT} runs at once per connection
 *   (the server's limit), more as those end; a `RATE_LIMITED` or
 *   `LOG_UNAVAILABLE` resume is tried again after `retry_after_ms`;
 * - keeps per run only what it needs: the contiguous high-water `seq`, the
 *   events held out of order (at most {@link MAX_HELD_EVENTS}), and the
 *   events an iterator has not taken yet; a run that ended is forgotten by
 *   the client (only its `Run` object, if you keep it, holds its events);
 * - stops for good, failing every pending command and run with a typed error,
 *   when the server replaces the connection (4009: `closed`, cause `replaced`;
 *   {@link Client.reconnectNow} starts again) or the token is refused and
 *   cannot be refreshed (a fixed token that expired: `auth_failed`);
 * - asks `token` (when it is a function) for a fresh token before each
 *   connection and `refreshBeforeExpiryMs` before the current one expires,
 *   and hands it to the server in-band (`authenticate`), without reconnecting;
 * - pings when the line is quiet and treats a connection that answers nothing
 *   for `pongTimeoutMs` as dead (a pulled cable is otherwise noticed late).
 *
 * ```ts
 * const client = connect({ url: "ws://127.0.0.1:8080/ws", token: () => fetchToken() })
 * const run = await client.start("calculator", "2+3*4")
 * for await (const event of run) console.log(event.seq, event.type)
 * ```
 *
 * The Effect-native face (events as a `Stream`, typed errors) is in
 * `./Effect.ts`, exported from the same entry point.
 *
 * @module
 */
import {
  type AgentEvent,
  type ClientMessage,
  decodeServerFrame,
  type ErrorCode,
  type RunInfo,
  type RunStatus,
  type ServerMessage,
  SUBPROTOCOL,
  type Thread,
  type Threads
} from "../protocol/Protocol.ts"

export type { AgentEvent, RunInfo, RunStatus, ServerMessage, Thread, ThreadInfo, Threads } from "../protocol/Protocol.ts"

/** Close codes the client reacts to (docs/protocol.md §6). */
const CLOSE_TOKEN_EXPIRED = 4001
const CLOSE_REPLACED = 4009
const CLOSE_TOO_BIG = 1009

/** Runs resumed at once on one connection at most (the server's `MAX_FOLLOWED_RUNS`); more wait their turn. */
export const MAX_RESUMES_IN_FLIGHT = 64
/** Events held out of order per run at most; past it they are dropped and the run is resumed from its high-water `seq`. */
export const MAX_HELD_EVENTS = 4096
/** Ended runs whose id the client remembers, to drop their late duplicates (oldest forgotten first). */
const MAX_ENDED_REMEMBERED = 1024

/** Where a token comes from: a fixed string, or a function asked before each connection and each refresh. */
export type TokenSource = string | (() => string | Promise<string>)

/** Reconnect policy: the n-th retry waits `min(maxDelayMs, initialDelayMs × factor^n)`, of which a random half (jitter). */
export interface ReconnectOptions {
  /** First delay in ms (default 250). */
  readonly initialDelayMs?: number
  /** Largest delay in ms (default 10000). */
  readonly maxDelayMs?: number
  /** Growth per attempt (default 2). */
  readonly factor?: number
}

/** Options of {@link connect}. */
export interface ClientOptions {
  /** The WebSocket endpoint, e.g. `ws://127.0.0.1:8080/ws`. */
  readonly url: string
  /** The JWT, or a function giving a current one (called before each connection and each refresh). */
  readonly token: TokenSource
  readonly reconnect?: ReconnectOptions
  /** With a function `token`: refresh in-band this many ms before the token's `exp` (default 60000; 0 = never). */
  readonly refreshBeforeExpiryMs?: number
  /** Send `ping` after this many ms without any frame from the server (default 20000; 0 = never). */
  readonly pingIntervalMs?: number
  /** A connection that received nothing this long after a ping is closed and reconnected (default 10000). */
  readonly pongTimeoutMs?: number
  /** The WebSocket constructor (default: the global one). */
  readonly WebSocket?: WebSocketConstructor
  /** Random numbers in [0, 1) for the backoff jitter and request ids' salt (default `Math.random`); seed it in tests. */
  readonly random?: () => number
}

/** The part of the standard `WebSocket` constructor the client uses. */
export type WebSocketConstructor = new(url: string, protocols: Array<string>) => WebSocket

/**
 * What the client knows of its connection; it never claims more than it saw.
 *
 * - `connecting`: the first connection is being opened;
 * - `open`: `connection_established` arrived; every followed run is caught up
 *   or being followed live (`resumed` > 0 after a reconnect that resumed runs);
 * - `resuming`: connected again after a drop; `pending` runs have not
 *   finished their replay yet;
 * - `reconnecting`: the connection dropped; the next attempt is at `retryAt`
 *   (epoch ms), attempt number `attempt`;
 * - `closed`: given up: `close()` was called, or the server replaced this
 *   connection (4009, too many connections of the user);
 * - `auth_failed`: the server refused the token (a 4001 close, or a fixed
 *   token past its `exp`) and there is no token function to get another:
 *   the client stops retrying; pending commands fail with
 *   {@link ClientClosedError} (reason `auth_failed`), runs with
 *   {@link RunLostError} (`auth_failed`). Sign in again with a new client.
 */
export type ConnectionState =
  | { readonly status: "connecting"; readonly attempt: number }
  | {
    readonly status: "open"
    readonly reconnects: number
    /** Runs caught up after the last reconnect. */
    readonly resumed: number
    /** Runs found lost since the last reconnect (server restarted, expired, unknown, refused). */
    readonly lost: number
    readonly epoch: string | undefined
  }
  | { readonly status: "resuming"; readonly reconnects: number; readonly pending: number; readonly epoch: string | undefined }
  | { readonly status: "reconnecting"; readonly attempt: number; readonly retryAt: number; readonly reason: string }
  | {
    readonly status: "closed"
    readonly reason: string
    /** `client`: `close()` was called; `replaced`: the server replaced this connection (4009); {@link Client.reconnectNow} starts again. */
    readonly cause: "client" | "replaced"
  }
  | { readonly status: "auth_failed"; readonly reason: string }

/**
 * Codes the client itself gives a command:
 * - `CONNECTION_LOST`: the connection dropped before a non-idempotent command was answered;
 * - `OUTCOME_UNKNOWN`: a start was sent, its answer was lost, and the server came back with
 *   another `server_epoch`: it may or may not have run; the client does not send it again
 *   (that could run it twice). Offer the user to retry;
 * - `MESSAGE_TOO_LARGE`: the command's encoded size is over the server's `max_message_bytes`
 *   (it was never sent), or the server closed with 1009 right after it was sent.
 */
export type ClientErrorCode = "CONNECTION_LOST" | "OUTCOME_UNKNOWN" | "MESSAGE_TOO_LARGE"

/** The server refused a command (`error` frame), e.g. `UNKNOWN_AGENT`, `RATE_LIMITED`, `RUN_LIMIT_EXCEEDED`, or the client did ({@link ClientErrorCode}). */
export class CommandError extends Error {
  override readonly name = "CommandError"
  /** The protocol error code (a code this client does not know is passed through as a string), or a {@link ClientErrorCode}. */
  readonly code: ErrorCode | ClientErrorCode | (string & {})
  /** With `RATE_LIMITED` / `SERVER_BUSY`: when a retry may succeed, in ms. */
  readonly retryAfterMs: number | undefined
  constructor(code: ErrorCode | ClientErrorCode | (string & {}), message: string, retryAfterMs?: number) {
    super(message)
    this.code = code
    this.retryAfterMs = retryAfterMs
  }
}

/** Why a run's events can no longer be had. */
export type RunLostReason =
  /** `server_epoch` changed: the server restarted and its run log is gone. */
  | "server_restarted"
  /** `RUN_EXPIRED`: past the retention window. */
  | "expired"
  /** `RUN_NOT_FOUND`. */
  | "not_found"
  /** The client was closed before the run ended. */
  | "client_closed"
  /** The server replaced the connection (4009) and the client stopped. */
  | "replaced"
  /** The token was refused and could not be refreshed; the client stopped. */
  | "auth_failed"
  /** The server refused the resume with a code the client does not act on (in the message). */
  | "refused"
  /**
   * The run's log ends before events this client already received (the resume was answered
   * `INVALID_MESSAGE` "beyond the run's last seq"): with several instances, the instance that ran it
   * lost its lease (paused or cut off from Redis) and another instance closed the run with
   * `INSTANCE_LOST`; the events this client got past the log's last `seq` are not part of the run's record.
   */
  | "diverged"

/** A run the client follows ended without its last event reaching the client. */
export class RunLostError extends Error {
  override readonly name = "RunLostError"
  readonly run_id: string
  readonly reason: RunLostReason
  /** Every event up to this `seq` was delivered before the loss. */
  readonly lastDeliveredSeq: number
  constructor(run_id: string, reason: RunLostReason, message: string, lastDeliveredSeq: number) {
    super(message)
    this.run_id = run_id
    this.reason = reason
    this.lastDeliveredSeq = lastDeliveredSeq
  }
}

/** The client stopped; the command was not sent or not answered. `reason`: `close()` was called, the server replaced the connection (4009), or the token was refused. */
export class ClientClosedError extends Error {
  override readonly name = "ClientClosedError"
  readonly reason: "client" | "replaced" | "auth_failed"
  constructor(message = "the client is closed", reason: "client" | "replaced" | "auth_failed" = "client") {
    super(message)
    this.reason = reason
  }
}

/** A run the client follows: its ids, and its events (each once, in `seq` order) as an async iterable. */
export interface Run extends AsyncIterable<AgentEvent> {
  readonly run_id: string
  readonly thread_id: string | undefined
  /** The start's `request_id` (undefined for a run attached with {@link Client.follow}). */
  readonly request_id: string | undefined
  /** `true` when the server answered the start as a repeat of an earlier one (nothing new was started). */
  readonly duplicate: boolean
  /**
   * Events delivered and not yet taken by an iterator, in `seq` order: all of
   * them while no iterator was created; once one is, events every live
   * iterator has passed are let go (a later iterator starts at the oldest
   * event still held).
   */
  readonly events: ReadonlyArray<AgentEvent>
  /** The root `agent_completed`, once delivered. */
  readonly completed: Promise<Extract<AgentEvent, { type: "agent_completed" }>>
  /** Highest `seq` up to which every event was delivered. */
  readonly lastSeq: number
}

/** Options of {@link Client.start}. */
export interface StartOptions {
  readonly thread_id?: string
  /** Defaults to a fresh id; re-sent unchanged on reconnect so the start is idempotent. */
  readonly request_id?: string
}

/** Filter of {@link Client.listRuns}. */
export interface ListRunsOptions {
  readonly thread_id?: string
  readonly status?: RunStatus
  readonly limit?: number
}

/** Paging of {@link Client.listThreads}: `before` is the previous page's `next_before`; `limit` 1 to 100 (default 20). */
export interface ListThreadsOptions {
  readonly before?: string
  readonly limit?: number
}

/** A connected agentwire client. */
export interface Client {
  /** The connection state now; see {@link ConnectionState}. */
  readonly state: ConnectionState
  /** Called on every state change; returns the unsubscribe function. */
  readonly onState: (listener: (state: ConnectionState) => void) => () => void
  /** Called with every event the client delivers (of every followed run, each once, in per-run order). */
  readonly onEvent: (listener: (event: AgentEvent) => void) => () => void
  /**
   * Starts a run of `agent` (the server's default agent when undefined) on
   * `request`. Resolves at `run_accepted`; rejects with {@link CommandError}
   * when refused, {@link ClientClosedError} when closed first.
   */
  readonly start: (agent: string | undefined, request: string, options?: StartOptions) => Promise<Run>
  /** Follows an existing run (e.g. one from {@link Client.listRuns}) from `afterSeq` (default 0: all of it). */
  readonly follow: (run_id: string, afterSeq?: number) => Run
  /** Stops a run; resolves with the run ids actually stopped (empty when it had already ended). */
  readonly stop: (run_id: string) => Promise<ReadonlyArray<string>>
  /** The user's active and retained runs, newest first. */
  readonly listRuns: (options?: ListRunsOptions) => Promise<ReadonlyArray<RunInfo>>
  /** The user's durable threads (history), newest `updated_at` first, one page (`next_before` asks for the next). */
  readonly listThreads: (options?: ListThreadsOptions) => Promise<Threads>
  /** One thread's stored messages and runs, oldest first (bounded: `truncated` when older ones were left out); rejects `THREAD_NOT_FOUND`. */
  readonly getThread: (thread_id: string) => Promise<Thread>
  /** Skips the backoff wait and reconnects now (e.g. on the browser's `online` event); after a 4009 `closed` or `auth_failed`, starts again. */
  readonly reconnectNow: () => void
  /** Closes the connection for good; followed runs that have not ended fail with `RunLostError("client_closed")`. */
  readonly close: () => void
}

type AgentCompleted = Extract<AgentEvent, { type: "agent_completed" }>

interface Tracker {
  readonly run_id: string
  thread_id: string | undefined
  readonly request_id: string | undefined
  duplicate: boolean
  /** Delivered events no live iterator has passed yet (all of them while no iterator was made). */
  buffer: Array<AgentEvent>
  /** How many delivered events were let go before `buffer[0]`. */
  base: number
  /** The live iterators' positions (absolute: `base + index in buffer`). */
  readonly cursors: Set<{ at: number }>
  iterated: boolean
  /** Early events (seq > delivered + 1), by seq. */
  readonly held: Map<number, AgentEvent>
  delivered: number
  ended: boolean
  failure: RunLostError | undefined
  /** Waiting for this connection's `run_resumed` (or its error), or queued to be resumed. */
  resuming: boolean
  readonly wake: Set<() => void>
  readonly completed: Promise<AgentCompleted>
  resolveCompleted: (event: AgentCompleted) => void
  rejectCompleted: (error: Error) => void
}

interface Pending {
  readonly request_id: string
  readonly frame: ClientMessage
  readonly resolve: (message: ServerMessage) => void
  readonly reject: (error: Error) => void
  /** Re-send on a new connection when unanswered (idempotent commands). */
  readonly resend: boolean
  sentOn: WebSocket | undefined
}

/** Events of runs the client does not follow (yet) are kept, at most this many per run and this many runs. */
const MAX_ORPHAN_EVENTS = 10_000
const MAX_ORPHAN_RUNS = 64

const isAgentEvent = (message: ServerMessage): message is AgentEvent => "seq" in message && "run_id" in message

const hex = (random: () => number, n: number): string => {
  const bytes = new Uint8Array(n)
  globalThis.crypto.getRandomValues(bytes)
  // the salt keeps ids distinct even where getRandomValues is stubbed
  return Array.from(bytes, (b) => ((b ^ Math.floor(random() * 256)) & 255).toString(16).padStart(2, "0")).join("")
}

const encoder = new TextEncoder()
/** The UTF-8 size of a frame as sent, in bytes (what the server compares with `max_message_bytes`). */
const encodedSize = (frame: ClientMessage): number => encoder.encode(JSON.stringify(frame)).length

/** The `exp` of a JWT in ms, read without verifying (the server verifies); undefined when unreadable. */
export const tokenExpiry = (token: string): number | undefined => {
  const part = token.split(".")[1]
  if (part === undefined) return undefined
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="))
    const exp = (JSON.parse(json) as { exp?: unknown }).exp
    return typeof exp === "number" && Number.isFinite(exp) ? exp * 1000 : undefined
  } catch {
    return undefined
  }
}

/** Opens a client; it connects at once and keeps reconnecting until {@link Client.close}. */
export const connect = (options: ClientOptions): Client => {
  const WebSocketImpl: WebSocketConstructor | undefined = options.WebSocket ?? globalThis.WebSocket
  if (WebSocketImpl === undefined) throw new Error("agentwire/client: no WebSocket constructor (pass options.WebSocket)")
  const random = options.random ?? Math.random
  const initialDelay = options.reconnect?.initialDelayMs ?? 250
  const maxDelay = options.reconnect?.maxDelayMs ?? 10_000
  const factor = options.reconnect?.factor ?? 2
  const refreshBefore = options.refreshBeforeExpiryMs ?? 60_000
  const pingInterval = options.pingIntervalMs ?? 20_000
  const pongTimeout = options.pongTimeoutMs ?? 10_000

  let state: ConnectionState = { status: "connecting", attempt: 0 }
  const stateListeners = new Set<(state: ConnectionState) => void>()
  const eventListeners = new Set<(event: AgentEvent) => void>()
  /** Runs followed and not ended (an ended run is forgotten: only its `Run` object holds it). */
  const trackers = new Map<string, Tracker>()
  /** Ended runs' ids, to drop their late duplicates (insertion order: oldest first). */
  const endedRuns = new Set<string>()
  /** A start's tracker, from its `run_accepted` until the start's promise takes it. */
  const accepted = new Map<string, Tracker>()
  const orphans = new Map<string, Array<AgentEvent>>()
  const pending = new Map<string, Pending>()
  /** Runs waiting for a resume slot on this connection, in order. */
  const resumeQueue = new Set<string>()
  /** This connection's resume requests: request_id → run_id. */
  const resumeRequests = new Map<string, string>()
  /** Runs resumed on this connection and not ended: each holds one of the server's follower slots. */
  const resumeSlots = new Set<string>()
  /** This connection's tally for the state: runs resumed, runs found lost. */
  const resumedRuns = new Set<string>()
  const lostRuns = new Set<string>()

  let ws: WebSocket | undefined
  let established = false
  let epoch: string | undefined
  let maxMessageBytes: number | undefined
  /** The last command frame sent, and on which socket (what a 1009 close refers to). */
  let lastSent: { readonly socket: WebSocket; readonly request_id: string } | undefined
  let attempt = 0
  let reconnects = 0
  let connectedBefore = false
  let closed = false
  /** Stopped after a 4009 or a refused token; `reconnectNow` starts again. */
  let halted = false
  let retryTimer: ReturnType<typeof setTimeout> | undefined
  let refreshTimer: ReturnType<typeof setTimeout> | undefined
  let pingTimer: ReturnType<typeof setTimeout> | undefined
  let resumeTimer: ReturnType<typeof setTimeout> | undefined
  let lastReceived = 0
  let currentToken: string | undefined

  const newId = (prefix: string) => `${prefix}_${hex(random, 12)}`

  const setState = (next: ConnectionState) => {
    state = next
    for (const listener of Array.from(stateListeners)) listener(next)
  }

  const openState = () => {
    const resuming = Array.from(trackers.values()).filter((t) => t.resuming && !t.ended).length
    if (resuming > 0) setState({ status: "resuming", reconnects, pending: resuming, epoch })
    else {
      const resumed = reconnects > 0 ? Array.from(resumedRuns).filter((id) => !lostRuns.has(id)).length : 0
      setState({ status: "open", reconnects, resumed, lost: reconnects > 0 ? lostRuns.size : 0, epoch })
    }
  }
  const refreshOpenState = () => {
    if (established && (state.status === "resuming" || state.status === "open")) openState()
  }

  const sendFrame = (socket: WebSocket, frame: ClientMessage) => {
    if (socket.readyState !== 1) return false
    try {
      socket.send(JSON.stringify(frame))
      return true
    } catch {
      return false
    }
  }

  // ---- runs ----------------------------------------------------------------

  const makeTracker = (run_id: string, thread_id: string | undefined, request_id: string | undefined, afterSeq: number): Tracker => {
    let resolveCompleted!: (event: AgentCompleted) => void
    let rejectCompleted!: (error: Error) => void
    const completed = new Promise<AgentCompleted>((resolve, reject) => {
      resolveCompleted = resolve
      rejectCompleted = reject
    })
    // an unobserved lost run must not be an unhandled rejection
    completed.catch(() => {})
    return {
      run_id,
      thread_id,
      request_id,
      duplicate: false,
      buffer: [],
      base: 0,
      cursors: new Set(),
      iterated: false,
      held: new Map(),
      delivered: afterSeq,
      ended: false,
      failure: undefined,
      resuming: false,
      wake: new Set(),
      completed,
      resolveCompleted,
      rejectCompleted
    }
  }

  const wakeAll = (tracker: Tracker) => {
    // taken out first: a waiter that finds nothing new registers itself again
    const waiters = Array.from(tracker.wake)
    tracker.wake.clear()
    for (const w of waiters) w()
  }

  /** Lets go of the events every live iterator has passed (only once an iterator was made). */
  const trim = (tracker: Tracker) => {
    if (!tracker.iterated) return
    let lowest = tracker.base + tracker.buffer.length
    for (const cursor of tracker.cursors) lowest = Math.min(lowest, cursor.at)
    const drop = lowest - tracker.base
    if (drop <= 0) return
    tracker.buffer = drop >= tracker.buffer.length ? [] : tracker.buffer.slice(drop)
    tracker.base = lowest
  }

  /** The run ended (completed or lost): the client forgets it and frees its resume slot. */
  const forget = (tracker: Tracker) => {
    if (trackers.get(tracker.run_id) === tracker) trackers.delete(tracker.run_id)
    endedRuns.delete(tracker.run_id)
    endedRuns.add(tracker.run_id)
    if (endedRuns.size > MAX_ENDED_REMEMBERED) endedRuns.delete(endedRuns.values().next().value!)
    resumeQueue.delete(tracker.run_id)
    if (resumeSlots.delete(tracker.run_id)) pumpResumes()
  }

  const deliver = (tracker: Tracker, event: AgentEvent) => {
    if (tracker.ended || event.seq <= tracker.delivered || tracker.held.has(event.seq)) return
    if (event.seq > tracker.delivered + 1 && tracker.held.size >= MAX_HELD_EVENTS) {
      // too far ahead of a gap: let them go and have the run sent again from what it has
      tracker.held.clear()
      resumeTracker(tracker)
      return
    }
    tracker.held.set(event.seq, event)
    let next = tracker.held.get(tracker.delivered + 1)
    while (next !== undefined && !tracker.ended) {
      tracker.held.delete(next.seq)
      tracker.delivered = next.seq
      tracker.thread_id ??= next.thread_id
      tracker.buffer.push(next)
      for (const listener of Array.from(eventListeners)) listener(next)
      if (next.type === "agent_completed" && next.depth === 0) {
        tracker.ended = true
        tracker.resuming = false
        tracker.held.clear()
        tracker.resolveCompleted(next)
        forget(tracker)
      }
      next = tracker.held.get(tracker.delivered + 1)
    }
    wakeAll(tracker)
  }

  const loseRun = (tracker: Tracker, reason: RunLostReason, message: string) => {
    if (tracker.ended) return
    tracker.ended = true
    tracker.resuming = false
    tracker.failure = new RunLostError(tracker.run_id, reason, message, tracker.delivered)
    tracker.held.clear()
    tracker.rejectCompleted(tracker.failure)
    if (reason !== "client_closed" && reason !== "replaced" && reason !== "auth_failed") lostRuns.add(tracker.run_id)
    forget(tracker)
    wakeAll(tracker)
  }

  /** Sends queued resumes while this connection has slots (at most {@link MAX_RESUMES_IN_FLIGHT} runs resumed at once). */
  const pumpResumes = () => {
    const socket = ws
    if (socket === undefined || !established || resumeTimer !== undefined) return
    for (const run_id of Array.from(resumeQueue)) {
      if (resumeSlots.size >= MAX_RESUMES_IN_FLIGHT) return
      resumeQueue.delete(run_id)
      const tracker = trackers.get(run_id)
      if (tracker === undefined || tracker.ended) continue
      const request_id = newId("res")
      resumeRequests.set(request_id, run_id)
      resumeSlots.add(run_id)
      resumedRuns.add(run_id)
      sendFrame(socket, { type: "resume_run", run_id, after_seq: tracker.delivered, request_id })
    }
  }

  const resumeTracker = (tracker: Tracker) => {
    if (tracker.ended) return
    tracker.resuming = true
    // a run resumed again on this connection: the newer resume replaces the older on the server
    resumeSlots.delete(tracker.run_id)
    resumeQueue.add(tracker.run_id)
    pumpResumes()
  }

  /** A resume was refused for now (`RATE_LIMITED`, `LOG_UNAVAILABLE`): queue it again, first, and pause the queue. */
  const retryResume = (tracker: Tracker, afterMs: number) => {
    resumeSlots.delete(tracker.run_id)
    const rest = Array.from(resumeQueue)
    resumeQueue.clear()
    resumeQueue.add(tracker.run_id)
    for (const id of rest) resumeQueue.add(id)
    if (resumeTimer === undefined) {
      resumeTimer = setTimeout(() => {
        resumeTimer = undefined
        pumpResumes()
      }, Math.max(50, afterMs))
    }
  }

  const track = (run_id: string, thread_id: string | undefined, request_id: string | undefined, afterSeq: number): Tracker => {
    const existing = trackers.get(run_id)
    if (existing !== undefined) return existing
    const tracker = makeTracker(run_id, thread_id, request_id, afterSeq)
    trackers.set(run_id, tracker)
    endedRuns.delete(run_id)
    const early = orphans.get(run_id)
    orphans.delete(run_id)
    for (const event of early ?? []) deliver(tracker, event)
    return tracker
  }

  const runOf = (tracker: Tracker): Run => ({
    run_id: tracker.run_id,
    get thread_id() {
      return tracker.thread_id
    },
    request_id: tracker.request_id,
    get duplicate() {
      return tracker.duplicate
    },
    get events() {
      return tracker.buffer
    },
    completed: tracker.completed,
    get lastSeq() {
      return tracker.delivered
    },
    [Symbol.asyncIterator]: (): AsyncIterator<AgentEvent> => {
      tracker.iterated = true
      const cursor = { at: tracker.base }
      tracker.cursors.add(cursor)
      const finish = () => {
        tracker.cursors.delete(cursor)
        trim(tracker)
      }
      return {
        next: () =>
          new Promise<IteratorResult<AgentEvent>>((resolve, reject) => {
            const attempt = () => {
              if (!tracker.cursors.has(cursor)) return resolve({ value: undefined, done: true })
              const event = tracker.buffer[cursor.at - tracker.base]
              if (event !== undefined) {
                cursor.at++
                trim(tracker)
                return resolve({ value: event, done: false })
              }
              if (tracker.failure !== undefined) {
                finish()
                return reject(tracker.failure)
              }
              if (tracker.ended) {
                finish()
                return resolve({ value: undefined, done: true })
              }
              tracker.wake.add(attempt)
            }
            attempt()
          }),
        return: () => {
          finish()
          return Promise.resolve({ value: undefined, done: true })
        }
      }
    }
  })

  // ---- commands ------------------------------------------------------------

  /** Sends a pending command on `socket`, unless it is over `max_message_bytes`: then it fails, never sent. */
  const transmit = (socket: WebSocket, entry: Pending) => {
    if (maxMessageBytes !== undefined) {
      const size = encodedSize(entry.frame)
      if (size > maxMessageBytes) {
        pending.delete(entry.request_id)
        entry.reject(
          new CommandError("MESSAGE_TOO_LARGE", `the message is ${size} bytes; the server accepts at most ${maxMessageBytes} bytes (max_message_bytes)`)
        )
        return
      }
    }
    if (sendFrame(socket, entry.frame)) {
      entry.sentOn = socket
      lastSent = { socket, request_id: entry.request_id }
    }
  }

  const command = (frame: ClientMessage & { readonly request_id: string }, resend: boolean): Promise<ServerMessage> => {
    if (closed) return Promise.reject(new ClientClosedError())
    if (halted) return Promise.reject(new ClientClosedError(`the client stopped: ${"reason" in state ? state.reason : state.status}`, state.status === "auth_failed" ? "auth_failed" : "replaced"))
    return new Promise<ServerMessage>((resolve, reject) => {
      const entry: Pending = { request_id: frame.request_id, frame, resolve, reject, resend, sentOn: undefined }
      pending.set(frame.request_id, entry)
      if (ws !== undefined && established) transmit(ws, entry)
    })
  }

  const settle = (request_id: string | undefined, message: ServerMessage): boolean => {
    if (request_id === undefined) return false
    const entry = pending.get(request_id)
    if (entry === undefined) return false
    pending.delete(request_id)
    if (message.type === "error") entry.reject(new CommandError(message.code, message.message, message.retry_after_ms))
    else entry.resolve(message)
    return true
  }

  // ---- token refresh -------------------------------------------------------

  const clearRefresh = () => {
    if (refreshTimer !== undefined) clearTimeout(refreshTimer)
    refreshTimer = undefined
  }

  const scheduleRefresh = (expiresAtMs: number | undefined) => {
    clearRefresh()
    if (typeof options.token === "string" || refreshBefore <= 0 || expiresAtMs === undefined) return
    const delay = Math.max(1000, Math.min(expiresAtMs - refreshBefore - Date.now(), 2 ** 31 - 1))
    refreshTimer = setTimeout(refresh, delay)
  }

  const refresh = () => {
    const socket = ws
    if (closed || socket === undefined || !established || typeof options.token === "string") return
    const source = options.token
    Promise.resolve()
      .then(() => source())
      .then((token) => {
        if (socket !== ws || closed) return
        return command({ type: "authenticate", token, request_id: newId("auth") }, false).then((answer) => {
          currentToken = token
          scheduleRefresh(answer.type === "authenticated" ? Date.parse(answer.expires_at) : tokenExpiry(token))
        })
      })
      .catch(() => {
        // refused or the provider failed: try again soon; the 4001 close + reconnect is the fallback
        if (socket === ws && !closed) refreshTimer = setTimeout(refresh, 5000)
      })
  }

  // ---- liveness ------------------------------------------------------------

  const clearPing = () => {
    if (pingTimer !== undefined) clearTimeout(pingTimer)
    pingTimer = undefined
  }

  const schedulePing = (socket: WebSocket) => {
    clearPing()
    if (pingInterval <= 0) return
    const check = () => {
      if (socket !== ws) return
      const quiet = Date.now() - lastReceived
      if (quiet >= pingInterval + pongTimeout) {
        // nothing at all since our ping: the line is dead, even if the socket does not know yet
        drop(socket, "no answer from the server")
        return
      }
      if (quiet >= pingInterval) sendFrame(socket, { type: "ping" })
      pingTimer = setTimeout(check, quiet >= pingInterval ? pongTimeout : pingInterval - quiet)
    }
    pingTimer = setTimeout(check, pingInterval)
  }

  // ---- connection ----------------------------------------------------------

  const onEstablished = (socket: WebSocket, serverEpoch: string | undefined, maxBytes: number) => {
    established = true
    maxMessageBytes = maxBytes
    attempt = 0
    if (connectedBefore) reconnects++
    connectedBefore = true
    resumedRuns.clear()
    lostRuns.clear()
    const epochChanged = epoch !== undefined && serverEpoch !== undefined && serverEpoch !== epoch
    epoch = serverEpoch ?? epoch
    if (epochChanged) {
      for (const tracker of Array.from(trackers.values())) {
        loseRun(tracker, "server_restarted", "the server restarted (another server_epoch): the run's remaining events are gone")
      }
      orphans.clear()
    }
    // resume every followed run that has not ended, from what it has (queued: a bounded number at once)
    for (const tracker of trackers.values()) resumeTracker(tracker)
    // unanswered commands: idempotent ones are sent again, the others fail
    for (const entry of Array.from(pending.values())) {
      const sentBefore = entry.sentOn !== undefined && entry.sentOn !== socket
      if (sentBefore && epochChanged && entry.frame.type === "start_agent") {
        // the new server cannot tell whether the old one ran it: sending it again could run it twice
        pending.delete(entry.request_id)
        entry.reject(
          new CommandError(
            "OUTCOME_UNKNOWN",
            "the server restarted before it confirmed this start: it may or may not have run; send it again to start it anew"
          )
        )
      } else if (sentBefore && !entry.resend) {
        pending.delete(entry.request_id)
        entry.reject(new CommandError("CONNECTION_LOST", "the connection dropped before the server answered"))
      } else {
        transmit(socket, entry)
      }
    }
    if (typeof options.token !== "string" && currentToken !== undefined) scheduleRefresh(tokenExpiry(currentToken))
    openState()
  }

  /** An `error` frame answering one of this connection's resumes. */
  const onResumeRefused = (run_id: string, message: Extract<ServerMessage, { type: "error" }>) => {
    const tracker = trackers.get(run_id)
    if (tracker === undefined || tracker.ended) return
    switch (message.code) {
      case "RESUME_REPLACED":
        // a later resume of the run took over (it holds the slot): nothing to do
        return
      case "RATE_LIMITED":
      case "LOG_UNAVAILABLE":
      case "SERVER_BUSY":
        return retryResume(tracker, message.retry_after_ms ?? 1000)
      case "RUN_EXPIRED":
      case "RUN_NOT_FOUND":
        return loseRun(tracker, message.code === "RUN_EXPIRED" ? "expired" : "not_found", message.message)
      case "INVALID_MESSAGE":
        // after_seq past the log's end: the log ends before what this connection delivered
        if (message.message.includes("beyond the run's last seq")) {
          const end = message.last_seq === undefined ? "" : ` at seq ${message.last_seq}`
          return loseRun(
            tracker,
            "diverged",
            `the run's log ends${end}, before events this client received (up to seq ${tracker.delivered}): the instance that ran it lost its lease and another instance closed the run (INSTANCE_LOST)`
          )
        }
        return loseRun(tracker, "refused", `the server refused to resume the run (${message.code}): ${message.message}`)
      default:
        return loseRun(tracker, "refused", `the server refused to resume the run (${message.code}): ${message.message}`)
    }
  }

  const onFrame = (socket: WebSocket, data: unknown) => {
    if (socket !== ws) return
    lastReceived = Date.now()
    if (typeof data !== "string") return
    const message = decodeServerFrame(data)
    if (message === undefined) return
    if (isAgentEvent(message)) {
      const tracker = trackers.get(message.run_id)
      if (tracker !== undefined) return deliver(tracker, message)
      if (endedRuns.has(message.run_id)) return
      // a run we do not follow (yet): its run_accepted may be on its way (retried start)
      let early = orphans.get(message.run_id)
      if (early === undefined) {
        if (orphans.size >= MAX_ORPHAN_RUNS) orphans.delete(orphans.keys().next().value!)
        early = []
        orphans.set(message.run_id, early)
      }
      if (early.length < MAX_ORPHAN_EVENTS) early.push(message)
      return
    }
    switch (message.type) {
      case "connection_established":
        return onEstablished(socket, message.server_epoch, message.max_message_bytes)
      case "run_accepted": {
        const tracker = track(message.run_id, message.thread_id, message.request_id, 0)
        if (message.request_id !== undefined && pending.has(message.request_id)) accepted.set(message.request_id, tracker)
        if (message.duplicate === true) {
          // the start reached the server before (a retry): this connection may have missed its beginning
          tracker.duplicate = true
          resumeTracker(tracker)
          refreshOpenState()
        }
        settle(message.request_id, message)
        return
      }
      case "run_resumed": {
        const run_id = message.request_id === undefined ? undefined : resumeRequests.get(message.request_id)
        if (message.request_id !== undefined) resumeRequests.delete(message.request_id)
        const tracker = trackers.get(run_id ?? message.run_id)
        if (tracker !== undefined && tracker.resuming && !resumeQueue.has(tracker.run_id)) {
          tracker.resuming = false
          refreshOpenState()
        }
        settle(message.request_id, message)
        return
      }
      case "error": {
        const resumed = message.request_id === undefined ? undefined : resumeRequests.get(message.request_id)
        if (resumed !== undefined) {
          resumeRequests.delete(message.request_id!)
          onResumeRefused(resumed, message)
          refreshOpenState()
        } else if (message.run_id !== undefined && (message.code === "RUN_NOT_FOUND" || message.code === "RUN_EXPIRED")) {
          const tracker = trackers.get(message.run_id)
          if (tracker !== undefined) {
            loseRun(tracker, message.code === "RUN_EXPIRED" ? "expired" : "not_found", message.message)
            refreshOpenState()
          }
        }
        settle(message.request_id, message)
        return
      }
      default:
        if ("request_id" in message) settle(message.request_id, message)
    }
  }

  const scheduleReconnect = (reason: string) => {
    if (closed || halted) return
    const base = Math.min(maxDelay, initialDelay * factor ** attempt)
    const delay = base / 2 + random() * (base / 2)
    attempt++
    setState({ status: "reconnecting", attempt, retryAt: Date.now() + delay, reason })
    retryTimer = setTimeout(open, delay)
  }

  /** Forgets the connection (its socket, timers and resume bookkeeping). */
  const detach = () => {
    ws = undefined
    established = false
    clearPing()
    clearRefresh()
    if (resumeTimer !== undefined) clearTimeout(resumeTimer)
    resumeTimer = undefined
    resumeQueue.clear()
    resumeRequests.clear()
    resumeSlots.clear()
    for (const tracker of trackers.values()) tracker.resuming = false
  }

  const drop = (socket: WebSocket, reason: string) => {
    if (socket !== ws) return
    detach()
    try {
      socket.close()
    } catch {
      // already closing
    }
    scheduleReconnect(reason)
  }

  /** Stops for good (4009, refused token): every pending command and run fails with a typed error. */
  const halt = (next: ConnectionState & { readonly reason: string }, why: "replaced" | "auth_failed") => {
    detach()
    halted = true
    if (retryTimer !== undefined) clearTimeout(retryTimer)
    retryTimer = undefined
    for (const tracker of Array.from(trackers.values())) loseRun(tracker, why, next.reason)
    for (const entry of Array.from(pending.values())) entry.reject(new ClientClosedError(next.reason, why))
    pending.clear()
    setState(next)
  }

  const authFailed = (reason: string) => halt({ status: "auth_failed", reason }, "auth_failed")

  /** A fixed token past its `exp` can never be accepted again (a token function may give a new one). */
  const tokenDead = (token: string | undefined) => {
    if (typeof options.token !== "string" || token === undefined) return false
    const exp = tokenExpiry(token)
    return exp !== undefined && exp <= Date.now()
  }

  const open = () => {
    retryTimer = undefined
    if (closed || halted) return
    if (state.status !== "reconnecting") setState({ status: "connecting", attempt })
    const tokenSource = options.token
    Promise.resolve()
      .then(() => (typeof tokenSource === "string" ? tokenSource : tokenSource()))
      .then(
        (token) => {
          if (closed || halted) return
          currentToken = token
          if (tokenDead(token)) return authFailed("the token has expired; sign in again")
          let socket: WebSocket
          try {
            socket = new WebSocketImpl(options.url, [SUBPROTOCOL, `jwt.${token}`])
          } catch (error) {
            scheduleReconnect(`cannot open the WebSocket: ${error instanceof Error ? error.message : String(error)}`)
            return
          }
          ws = socket
          established = false
          lastReceived = Date.now()
          socket.onmessage = (event) => onFrame(socket, event.data)
          socket.onopen = () => schedulePing(socket)
          socket.onclose = (event) => {
            if (socket !== ws) return
            if (event.code === CLOSE_REPLACED) {
              halt(
                { status: "closed", reason: "replaced by a newer connection of the same user (too many open connections)", cause: "replaced" },
                "replaced"
              )
              return
            }
            if (event.code === CLOSE_TOO_BIG && lastSent !== undefined && lastSent.socket === socket) {
              // the server refused the last frame as too large: sending it again would do the same, forever
              const entry = pending.get(lastSent.request_id)
              if (entry !== undefined) {
                pending.delete(entry.request_id)
                entry.reject(new CommandError("MESSAGE_TOO_LARGE", "the server closed the connection: the message is larger than it accepts (1009)"))
              }
            }
            if (event.code === CLOSE_TOKEN_EXPIRED) {
              if (typeof options.token === "string") return authFailed("the token expired and this client has no way to get a new one; sign in again")
              attempt = 0
            } else if (!established && tokenDead(currentToken)) {
              // the handshake was refused (a browser cannot see the 401) and the fixed token is past its exp
              return authFailed("the token has expired; sign in again")
            }
            drop(
              socket,
              event.code === CLOSE_TOKEN_EXPIRED
                ? "the token expired"
                : event.code === 1001
                ? "the server is restarting"
                : event.code === CLOSE_TOO_BIG
                ? "a message was too large"
                : established
                ? "the connection dropped"
                : "could not connect"
            )
          }
          socket.onerror = () => {
            // a close event follows
          }
        },
        (error: unknown) => scheduleReconnect(`the token provider failed: ${error instanceof Error ? error.message : String(error)}`)
      )
  }

  const close = () => {
    if (closed) return
    closed = true
    if (retryTimer !== undefined) clearTimeout(retryTimer)
    const socket = ws
    detach()
    try {
      socket?.close(1000, "client closed")
    } catch {
      // ignore
    }
    for (const tracker of Array.from(trackers.values())) loseRun(tracker, "client_closed", "the client was closed before the run ended")
    for (const entry of pending.values()) entry.reject(new ClientClosedError())
    pending.clear()
    setState({ status: "closed", reason: "closed by the client", cause: "client" })
  }

  const client: Client = {
    get state() {
      return state
    },
    onState: (listener) => {
      stateListeners.add(listener)
      return () => stateListeners.delete(listener)
    },
    onEvent: (listener) => {
      eventListeners.add(listener)
      return () => eventListeners.delete(listener)
    },
    start: (agent, request, startOptions = {}) => {
      const request_id = startOptions.request_id ?? newId("req")
      const frame: ClientMessage & { request_id: string } = {
        type: "start_agent",
        ...(agent === undefined ? {} : { agent }),
        user_request: request,
        ...(startOptions.thread_id === undefined ? {} : { thread_id: startOptions.thread_id }),
        request_id
      }
      return command(frame, true).then((answer) => {
        const run_id = answer.type === "run_accepted" ? answer.run_id : ""
        const tracker = accepted.get(request_id) ?? trackers.get(run_id) ?? track(run_id, startOptions.thread_id, request_id, 0)
        accepted.delete(request_id)
        return runOf(tracker)
      })
    },
    follow: (run_id, afterSeq = 0) => {
      const known = trackers.get(run_id)
      if (known !== undefined) return runOf(known)
      const tracker = track(run_id, undefined, undefined, afterSeq)
      if (closed || halted) loseRun(tracker, "client_closed", "the client is closed")
      else resumeTracker(tracker)
      return runOf(tracker)
    },
    stop: (run_id) =>
      command({ type: "stop_agent", run_id, request_id: newId("stop") }, true).then((answer) =>
        answer.type === "run_stopped" ? answer.run_ids : []
      ),
    listRuns: (filter = {}) =>
      command({ type: "list_runs", ...filter, request_id: newId("list") }, true).then((answer) =>
        answer.type === "runs" ? answer.runs : []
      ),
    listThreads: (page = {}) =>
      command({ type: "list_threads", ...page, request_id: newId("threads") }, true).then((answer) =>
        answer.type === "threads" ? answer : { type: "threads", threads: [] }
      ),
    getThread: (thread_id) =>
      command({ type: "get_thread", thread_id, request_id: newId("thread") }, true).then((answer) => {
        if (answer.type === "thread") return answer
        throw new CommandError("INTERNAL_ERROR", `unexpected answer ${answer.type} to get_thread`)
      }),
    reconnectNow: () => {
      if (closed) return
      if (halted) {
        halted = false
        attempt = 0
        open()
        return
      }
      if (retryTimer === undefined) return
      clearTimeout(retryTimer)
      attempt = 0
      open()
    },
    close
  }
  open()
  return client
}
