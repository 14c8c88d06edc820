/**
 * One accepted WebSocket connection.
 *
 * Sends `connection_established`, registers with the bridge (so the user's run
 * events reach it), then decodes client frames one at a time, in order. A bad
 * frame gets an `error` frame and the connection lives on. When the socket
 * closes, the bridge forgets the connection and its background work ends; a
 * command received before the close that changes state (`start_agent`,
 * `user_message`, `stop_agent`, `delete_thread`) is carried out all the same,
 * only its answer is dropped.
 *
 * An idle connection holds one object (`Conn`) and its socket: no fiber, no
 * queue, no scope. Its listeners, methods and settings are shared by every
 * connection of the server (`Shared`). Frames are handled by a fiber that is
 * started when a frame arrives and ends once the connection's inbox is empty;
 * what only some connections need (the background scope of stops, resumes and
 * thread requests, the frame budget, the runs it sent) is made on first use.
 *
 * Also here: where the token is taken from at the handshake, and which
 * subprotocol the server selects.
 *
 * @module
 */
import { Cause, Context, Effect, Exit, FiberMap, Scope, Semaphore, Stream } from "effect"
import type { IncomingMessage } from "node:http"
import type { Duplex } from "node:stream"
import { type RawData, WebSocket } from "ws"
import {
  type AgentEvent,
  type ClientMessage,
  decodeClientFrame,
  type ListRuns,
  PROTOCOL_VERSION,
  type ProtocolError,
  type ResumeRun,
  type ServerMessage,
  SUBPROTOCOL
} from "../protocol/Protocol.ts"
import { Auth, bearerToken, type VerifiedToken } from "../services/Auth.ts"
import { ExecutionEngineFactory } from "../services/ExecutionEngineFactory.ts"
import { follow, FOLLOW_PAGE, RunLog, type RunLogReadError } from "../services/RunLog.ts"
import * as UserExecutionContext from "../services/UserExecutionContext.ts"
import { type BridgeConnection, WebSocketBridge } from "../services/WebSocketBridge.ts"
import * as TokenBucket from "../layers/TokenBucket.ts"
import * as Deadlines from "./Deadlines.ts"
import * as SentSeqs from "./SentSeqs.ts"
import * as SocketOutput from "./SocketOutput.ts"
import * as ThreadRequests from "./ThreadRequests.ts"

/** Client frames waiting to be handled before the socket stops reading (backpressure, nothing dropped). */
const INBOX_HIGH_WATER = 64
/** Reading resumes when the waiting frames fall to this. */
const INBOX_LOW_WATER = 8

const TOKEN_PROTOCOL_PREFIX = "jwt."

/**
 * Runs whose sent `seq`s one connection remembers: the run that received an event least recently is forgotten
 * first (never one the connection follows).
 */
export const MAX_TRACKED_RUNS = 256

/** Bytes of one replay page at most: what a replay to a reader that is away holds in the server. */
export const REPLAY_PAGE_BYTES = 64 * 1024

/** Runs one connection may follow (`resume_run`) at once; more answer `RATE_LIMITED`. */
export const MAX_FOLLOWED_RUNS = 64

/**
 * What one connection sent of one run (its seqs), and which `resume_run`
 * follower, if any, is sending the run (then live events of the run are left
 * to it: it reads them from the log) and what it answers when replaced.
 */
interface Tracked {
  readonly sent: SentSeqs.SentSeqs
  follower: number
  replaced: (() => void) | undefined
  /** When the run last became the most recently received one (the connection's own counter). */
  at: number
}

/**
 * Runs past `MAX_TRACKED_RUNS` kept before the least recently received are dropped, in one pass: the bound is
 * exceeded by at most this many, and the pass is paid once per this many new runs, not per run.
 */
const TRACKED_SLACK = 32

/**
 * The runs one connection sent events of, each stamped with when it last became the most recently received run.
 * Made on the connection's first run event. Stamping (not reordering the `Map`) keeps a live event at one string
 * compare for the same run as last time and one lookup otherwise: a `Map` reordered by delete+set on every event
 * of interleaved runs left its deleted slots to every later scan (5 % of a paced server's samples).
 */
class Tracking {
  readonly runs = new Map<string, Tracked>()
  /** The run that received last: its next event changes nothing. */
  lastId = ""
  last: Tracked | undefined = undefined
  private clock = 0

  /** The run's record, made the most recently received (dropping the least recently received runs past the bound). */
  touch(run_id: string): Tracked {
    if (this.lastId === run_id && this.last !== undefined) return this.last
    const runs = this.runs
    let t = runs.get(run_id)
    if (t === undefined) {
      t = { sent: SentSeqs.make(), follower: 0, replaced: undefined, at: 0 }
      runs.set(run_id, t)
      if (runs.size > MAX_TRACKED_RUNS + TRACKED_SLACK) this.evict()
    }
    t.at = ++this.clock
    this.lastId = run_id
    this.last = t
    return t
  }

  /** Keeps the `MAX_TRACKED_RUNS` most recently received runs, and every followed run (at most `MAX_FOLLOWED_RUNS`). */
  private evict(): void {
    const candidates: Array<[string, Tracked]> = []
    for (const entry of this.runs) if (entry[1].follower === 0) candidates.push(entry)
    candidates.sort((a, b) => a[1].at - b[1].at)
    // the newest run (just added, at 0 until stamped) is never a candidate to drop
    let excess = this.runs.size - MAX_TRACKED_RUNS
    for (const [id, t] of candidates) {
      if (excess <= 0) break
      if (t.at === 0) continue
      this.runs.delete(id)
      excess--
    }
  }
}

const offeredProtocols = (request: IncomingMessage): Array<string> =>
  (request.headers["sec-websocket-protocol"] ?? "").split(",").map((p) => p.trim()).filter((p) => p.length > 0)

/**
 * The token of a handshake, from (in order) `Authorization: Bearer`, the
 * subprotocol `jwt.<token>`, or the `token` query parameter.
 */
export const tokenOf = (request: IncomingMessage, url: URL): string | undefined => {
  const fromHeader = bearerToken(request.headers.authorization)
  if (fromHeader !== undefined) return fromHeader
  const fromProtocol = offeredProtocols(request).find((p) => p.startsWith(TOKEN_PROTOCOL_PREFIX))
  if (fromProtocol !== undefined && fromProtocol.length > TOKEN_PROTOCOL_PREFIX.length) {
    return fromProtocol.slice(TOKEN_PROTOCOL_PREFIX.length)
  }
  const fromQuery = url.searchParams.get("token")
  return fromQuery !== null && fromQuery.length > 0 ? fromQuery : undefined
}

/**
 * `ws`'s `handleProtocols`: `agentwire.v1` when offered, else the offered
 * `jwt.<token>` echoed back (what browser clients of the seed expect), else none.
 */
export const selectProtocol = (protocols: Set<string>): string | false => {
  if (protocols.has(SUBPROTOCOL)) return SUBPROTOCOL
  for (const p of protocols) if (p.startsWith(TOKEN_PROTOCOL_PREFIX)) return p
  return false
}

/** Settings a connection needs. */
export interface ConnectionOptions {
  readonly maxMessageBytes: number
  /** The clock-skew tolerance of the auth policy: a token is honoured until `exp` plus this. */
  readonly clockSkewMs: number
  /** Client frames handled per second (burst: one second's worth); 0 = unlimited. */
  readonly maxFramesPerSecond: number
}

/** Close code for a connection whose token expired without a refresh. */
export const CLOSE_TOKEN_EXPIRED = 4001

/** ISO 8601 of a time in ms; never throws (a time a Date cannot hold gives the largest one). */
const isoOf = (ms: number): string => new Date(Number.isFinite(ms) ? Math.min(Math.max(ms, -8.64e15), 8.64e15) : 8.64e15).toISOString()

/**
 * The origin of a connection's times (epoch ms): kept relative to it, they are small integers, which V8 keeps
 * inside the object (an epoch-ms field is a 16-byte boxed number of its own, for 24.8 days of uptime).
 */
const ORIGIN = Date.now()

/**
 * `ms` itself, as a small integer when it is one: arithmetic on `Date.now()` yields a boxed number even when the
 * result is small, and a field that once held one stays boxed for every connection.
 */
const small = (ms: number): number => ((ms | 0) === ms ? ms | 0 : ms)

/**
 * What the heartbeat needs to judge a connection: the server pings every
 * socket once per interval, and drops one only when it made no progress at
 * all since the previous sweep (see `Liveness.check`).
 */
export interface Liveness {
  /** A pong arrived since the last sweep. */
  pong: boolean
  /** Client frames handled so far. */
  handled: number
  /** The connection paused reading because its inbox is full (its own backlog, not the client's fault). */
  pausedForInbox: boolean
}

/** One accepted socket: its write path and what the heartbeat reads. */
export interface Connection {
  readonly ws: WebSocket
  readonly socket: Duplex
  readonly output: SocketOutput.SocketOutput
  readonly limits: SocketOutput.OutputLimits
  readonly liveness: Liveness
  /** The connection's user (from its token). */
  readonly user_id: string
  /**
   * Waits until this connection's followers (`resume_run`) of runs that have ended sent those runs to their last
   * event (at shutdown, before the socket is closed: the terminal events of the runs stopped then reach it). A
   * follower of a run still running (on another instance) is not waited for. Never fails.
   */
  readonly followersSettled: () => Effect.Effect<void>
}

/** The services every connection of a server uses. */
export type Services = WebSocketBridge | ExecutionEngineFactory | Auth | RunLog

/**
 * What the connections of one server share, built once (`makeShared`): the
 * services, the settings, where their fibers run.
 */
export interface Shared {
  readonly bridge: WebSocketBridge["Service"]
  readonly engines: ExecutionEngineFactory["Service"]
  readonly auth: Auth["Service"]
  readonly log: RunLog["Service"]
  readonly options: ConnectionOptions
  readonly limits: SocketOutput.OutputLimits
  readonly budget: SocketOutput.OutputBudget | undefined
  /** Limits of one replay page (from the per-socket bound). */
  readonly replayPage: { readonly maxBytes: number; readonly maxEvents: number }
  /** Forks a connection's frame handler; every such fiber is interrupted when the server stops. */
  readonly fork: (effect: Effect.Effect<void>) => void
  /** Runs a short effect (a log line) at once, with the server's services, outside any connection fiber. */
  readonly now: (effect: Effect.Effect<void>) => void
  /** Closes a connection's background scope, off the caller's stack. */
  readonly closeLater: (scope: Scope.Closeable) => void
  /** The scope a connection's background scope is forked from (closed after the sockets at shutdown). */
  readonly scope: Scope.Scope
  /** Called once a connection's socket closed (before its fiber, if any, ends). */
  readonly onClose: (connection: Connection) => void
  /** The token expiry of every connection: one timer, not one per connection. */
  readonly expiries: Deadlines.Deadlines<Expiring>
}

/** A connection as the expiry queue sees it (deadlines in ms since `ORIGIN`). */
interface Expiring extends Deadlines.Item {
  watchExpiry(): void
}

/**
 * Builds what the connections of a server share. `fork` runs their frame
 * handlers (the server's fiber set), `scope` bounds their background work,
 * `onClose` tells the server a socket closed.
 */
export const makeShared = (settings: {
  readonly options: ConnectionOptions
  readonly limits: SocketOutput.OutputLimits
  readonly budget?: SocketOutput.OutputBudget | undefined
  readonly fork: (effect: Effect.Effect<void>) => void
  readonly scope: Scope.Scope
  readonly onClose: (connection: Connection) => void
}): Effect.Effect<Shared, never, Services> =>
  Effect.gen(function*() {
    const context = yield* Effect.context<Services>()
    // a root fiber with the server's services: a log line runs to its end inside this call
    const runFork = Effect.runForkWith(context)
    const maxSocketBytes = settings.limits.maxSocketBytes
    return {
      bridge: Context.get(context, WebSocketBridge),
      engines: Context.get(context, ExecutionEngineFactory),
      auth: Context.get(context, Auth),
      log: Context.get(context, RunLog),
      options: settings.options,
      limits: settings.limits,
      budget: settings.budget,
      replayPage: {
        maxBytes: Math.min(REPLAY_PAGE_BYTES, Math.floor(maxSocketBytes / 8)),
        maxEvents: Math.max(1, Math.min(FOLLOW_PAGE.maxEvents, Math.floor(maxSocketBytes / 8 / SocketOutput.FRAME_OVERHEAD_BYTES)))
      },
      fork: settings.fork,
      now: (effect) => void runFork(effect),
      closeLater: (scope) => void runFork(Scope.close(scope, Exit.void)),
      scope: settings.scope,
      onClose: settings.onClose,
      expiries: new Deadlines.Deadlines<Expiring>(fireExpiry, Deadlines.nodeClock(ORIGIN))
    }
  })

/** Where a socket's connection is kept, so that one set of listeners serves every socket. */
const CONNECTION = Symbol.for("agentwire/connection")
type Tagged = WebSocket & { [CONNECTION]?: Conn | undefined }

// Node callbacks: nothing a client sends may throw out of them
const receiveFrom = (c: Conn, data: RawData, isBinary: boolean) => {
  try {
    c.receive(isBinary ? new Uint8Array(data as Buffer) : (data as Buffer).toString("utf8"))
  } catch {
    c.output.destroy("protocol_error")
  }
}
function onMessage(this: Tagged, data: RawData, isBinary: boolean) {
  const c = this[CONNECTION]
  if (c !== undefined) receiveFrom(c, data, isBinary)
}
function onPong(this: Tagged) {
  const c = this[CONNECTION]
  if (c !== undefined) c.pong = true
}
function onError(this: Tagged, error: Error) {
  const c = this[CONNECTION]
  if (c !== undefined) c.socketError = error.message
}
function onClose(this: Tagged, code: number) {
  this[CONNECTION]?.closed(code)
}
const fireExpiry = (c: Expiring) => c.watchExpiry()

/**
 * The server's sockets (`WebSocketServer`'s `WebSocket` option, see `Server.ts`): the events `ws` emits on a socket
 * (`message`, `pong`, `error`, `close`) go straight to its connection, as the listeners above would take them, but
 * without listeners. Four listeners grow the socket's listener table to about 0.25 KiB; this way it stays empty.
 * Listeners added to such a socket still get every event; an `error` without one is not thrown (the connection
 * logs it when it closes).
 */
export class ServerSocket extends WebSocket {
  [CONNECTION]: Conn | undefined = undefined

  override emit(event: string | symbol, ...args: Array<unknown>): boolean {
    const c = this[CONNECTION]
    if (c !== undefined) {
      switch (event) {
        case "message":
          receiveFrom(c, args[0] as RawData, args[1] === true)
          break
        case "pong":
          c.pong = true
          break
        case "error":
          c.socketError = (args[0] as Error | undefined)?.message ?? "socket error"
          break
        case "close":
          c.closed(args[0] as number)
          break
      }
    }
    if (this.listenerCount(event) === 0) return c !== undefined
    return super.emit(event, ...args)
  }
}

const withRequestId = (request_id: string | undefined) => (request_id === undefined ? {} : { request_id })

/** What a connection makes on first use, and keeps until it closes. */
interface Background {
  /**
   * Stops waiting for terminal events, resumes, thread requests: interrupted when the connection closes (what
   * changes state, a stop or a thread's deletion, is carried out first; only its answer is dropped).
   */
  readonly scope: Scope.Closeable
  followed: FiberMap.FiberMap<string> | undefined
  pages: Semaphore.Semaphore | undefined
  followerIds: number
  /** Per run, what waits until the connection's follower of that run ended (`run_stopped`, see `afterFollowers`). */
  followerEnds: Map<string, Array<() => void>> | undefined
}

/**
 * One connection. A class, so that its methods are shared; it is also the
 * bridge's view of the connection (`send`) and the heartbeat's (`liveness`).
 */
class Conn implements Connection, BridgeConnection, Liveness {
  readonly ws: WebSocket
  readonly socket: Duplex
  readonly output: SocketOutput.SocketOutput
  readonly id: string
  readonly user_id: string
  pong = true
  handled = 0
  pausedForInbox = false
  socketError: string | undefined = undefined
  /** When the token's expiry is due, ms since `ORIGIN` (the expiry queue's). */
  deadline = 0
  /** The connection's place in the expiry queue (-1: not queued). */
  slot = -1
  private readonly shared: Shared
  /** ms since `ORIGIN` */
  private readonly openedAt: number
  /** The token's `exp`, ms since `ORIGIN` (`expiresAt` reads and writes it in epoch ms). */
  private expiresFromOrigin: number
  /** Frames not handled yet (none: undefined). */
  private inbox: Array<string | Uint8Array> | undefined = undefined
  /** A fiber is handling frames (or registering the connection). */
  private working = false
  private closeCode = 1006
  private isClosed = false
  private finished = false
  /** Per run, what this connection sent: each event reaches the connection at most once. */
  private tracked: Tracking | undefined = undefined
  private followers = 0
  private frames: TokenBucket.TokenBucket | undefined = undefined
  private background: Background | undefined = undefined
  private threads: ThreadHandler | undefined = undefined

  constructor(shared: Shared, ws: WebSocket, socket: Duplex, verified: VerifiedToken) {
    this.shared = shared
    this.ws = ws
    this.socket = socket
    this.output = SocketOutput.make(ws, socket as Duplex & SocketOutput.CorkableSocket, shared.limits, shared.budget)
    this.id = UserExecutionContext.generateId("conn")
    this.user_id = verified.user_id
    this.openedAt = small(Date.now() - ORIGIN)
    this.expiresFromOrigin = small(verified.expires_at - ORIGIN)
  }

  /** The token's `exp`, epoch ms. */
  private get expiresAt(): number {
    return this.expiresFromOrigin + ORIGIN
  }
  private set expiresAt(ms: number) {
    this.expiresFromOrigin = small(ms - ORIGIN)
  }

  get liveness(): Liveness {
    return this
  }

  get limits(): SocketOutput.OutputLimits {
    return this.shared.limits
  }

  /** Every frame to this socket, events and replies alike, takes the one write path. */
  reply(message: ServerMessage): void {
    this.output.send(JSON.stringify(message))
  }

  /** Logs with the connection's annotations. */
  private annotated<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
    return Effect.annotateLogs(effect, { user_id: this.user_id, connection_id: this.id })
  }

  open(): void {
    const ws = this.ws as Tagged
    ws[CONNECTION] = this
    if (!(ws instanceof ServerSocket)) {
      // any other `ws` socket (or a stand-in): the same handlers, as listeners
      ws.on("message", onMessage)
      ws.on("pong", onPong)
      ws.on("error", onError)
      ws.on("close", onClose)
    }
    this.reply({
      type: "connection_established",
      connection_id: this.id,
      user_id: this.user_id,
      protocol_version: PROTOCOL_VERSION,
      max_message_bytes: this.shared.options.maxMessageBytes,
      server_epoch: this.shared.log.epoch
    })
    const bridge = this.shared.bridge
    if (bridge.registerSync !== undefined) {
      bridge.registerSync(this)
      this.shared.now(this.annotated(Effect.logInfo("connection opened")))
    } else {
      // a bridge whose registration does I/O: the connection's first fiber registers it, frames wait
      this.working = true
      this.fork(Effect.andThen(
        Scope.provide(bridge.register(this), this.backgroundScope().scope),
        Effect.andThen(Effect.logInfo("connection opened"), this.drain())
      ))
    }
    this.watchExpiry()
  }

  /** The bridge's live events: skipped when a follower sends the run, or when already sent. */
  send(frame: string, event?: AgentEvent): void {
    if (event === undefined) return this.output.send(frame)
    const t = this.track(event.run_id)
    if (t.follower !== 0 || !t.sent.claim(event.seq)) return
    this.output.send(frame)
  }

  /** The run's record, made the most recently received one (the same run as last time: no Map lookup). */
  private track(run_id: string): Tracked {
    const tracking = (this.tracked ??= new Tracking())
    return tracking.lastId === run_id && tracking.last !== undefined ? tracking.last : tracking.touch(run_id)
  }

  followersSettled(): Effect.Effect<void> {
    return Effect.suspend(() => {
      const runs = this.tracked?.runs
      if (runs === undefined || this.followers === 0) return Effect.void
      const followed: Array<string> = []
      for (const [id, t] of runs) if (t.follower !== 0) followed.push(id)
      return Effect.flatMap(
        Effect.filter(followed, (id) =>
          this.shared.log.summary(this.user_id, id).pipe(
            Effect.map((summary) => summary.status !== "running"),
            // a run the log cannot tell about: its follower ends on the same error
            Effect.orElseSucceed(() => false)
          ), { concurrency: "unbounded" }),
        (ended) => this.afterFollowers(ended)
      )
    })
  }

  /**
   * Waits until this connection's followers (`resume_run`) of `run_ids`, if any, ended: a followed run's events
   * reach the socket through its follower, from the log, later than a reply sent at once would. A run followed
   * to its end ends its follower once its last event was sent. Nothing followed: no wait.
   */
  private afterFollowers(run_ids: ReadonlyArray<string>): Effect.Effect<void> {
    return Effect.suspend(() => {
      const runs = this.tracked?.runs
      const background = this.background
      if (runs === undefined || background === undefined) return Effect.void
      const pending = run_ids.filter((id) => (runs.get(id)?.follower ?? 0) !== 0)
      if (pending.length === 0) return Effect.void
      return Effect.callback<void>((resume) => {
        let left = pending.length
        const done = () => {
          if (--left === 0) resume(Effect.void)
        }
        const ends = (background.followerEnds ??= new Map())
        for (const id of pending) {
          const waiting = ends.get(id)
          if (waiting === undefined) ends.set(id, [done])
          else waiting.push(done)
        }
        return Effect.sync(() => {
          for (const id of pending) {
            const waiting = ends.get(id)
            const at = waiting?.indexOf(done) ?? -1
            if (at >= 0) waiting!.splice(at, 1)
            if (waiting?.length === 0) ends.delete(id)
          }
        })
      })
    })
  }

  // ---------------------------------------------------------------------------
  // the socket's life

  receive(frame: string | Uint8Array): void {
    const inbox = (this.inbox ??= [])
    inbox.push(frame)
    // a client sending faster than frames are handled is slowed down by TCP, not by dropping frames
    if (inbox.length >= INBOX_HIGH_WATER && !this.ws.isPaused) {
      this.pausedForInbox = true
      this.ws.pause()
    }
    if (!this.working) {
      this.working = true
      // handled from the scheduler, not inside the socket's read: a chunk's frames are queued first
      this.fork(Effect.andThen(Effect.yieldNow, this.drain()))
    }
  }

  closed(code: number): void {
    if (this.isClosed) return
    this.isClosed = true
    this.closeCode = code
    this.output.release()
    this.shared.onClose(this)
    // frames received before the close are still handled; the connection ends after them
    if (!this.working) this.finish()
  }

  /**
   * Runs `effect` (which ends with `drain`) as the connection's fiber; the connection ends once its
   * socket closed and no fiber is handling its frames.
   */
  private fork(effect: Effect.Effect<void>): void {
    this.shared.fork(this.annotated(effect).pipe(
      Effect.onInterrupt(() => Effect.sync(() => this.output.destroy("server_shutdown"))),
      Effect.tapCause((cause) =>
        Cause.hasInterruptsOnly(cause) ? Effect.void : Effect.andThen(
          // however the fiber fails, its socket ends with it: no connection outlives its handler
          Effect.sync(() => this.output.destroy("server_error")),
          Effect.logError("connection failed", Cause.pretty(cause).slice(0, 2000))
        )
      ),
      // `drain` hands the connection back when it finds the inbox empty; a fiber that did not get
      // there (interrupted, or failed) still holds it, and no other fiber can have started
      Effect.onExit((exit) =>
        Exit.isSuccess(exit) ? Effect.void : Effect.sync(() => {
          this.working = false
          if (this.isClosed) this.finish()
        })
      )
    ))
  }

  private finish(): void {
    if (this.finished) return
    this.finished = true
    this.shared.expiries.cancel(this)
    this.shared.bridge.unregisterSync?.(this)
    if (this.background !== undefined) this.shared.closeLater(this.background.scope)
    const output = this.output
    const reason = output.closeReason()
    const limit = output.limit()
    const socketError = this.socketError
    const closeCode = this.closeCode
    this.shared.now(this.annotated(Effect.logInfo("connection closed").pipe(
      Effect.annotateLogs({
        code: closeCode,
        reason: reason ?? (socketError !== undefined && /max payload/i.test(socketError)
          ? "message_too_big"
          : socketError !== undefined
          ? "protocol_error"
          : closeCode === 1000 || closeCode === 1001 || closeCode === 1005 // 1005: a close frame without a code
          ? "client_closed"
          : "client_gone"),
        duration_ms: Date.now() - ORIGIN - this.openedAt,
        ...(limit === undefined ? {} : { limit }),
        ...(socketError === undefined ? {} : { error: socketError })
      })
    )))
  }

  /** The token's expiry: without a refresh before it, the connection ends with TOKEN_EXPIRED / 4001. */
  watchExpiry(): void {
    this.shared.expiries.cancel(this)
    if (this.finished) return
    const due = small(this.expiresFromOrigin + this.shared.options.clockSkewMs)
    if (due > Date.now() - ORIGIN) {
      this.shared.expiries.schedule(this, due)
      return
    }
    this.reply({ type: "error", code: "TOKEN_EXPIRED", message: "the connection's token expired; reconnect with a fresh token, or send authenticate before expiry" })
    this.output.close(CLOSE_TOKEN_EXPIRED, "token expired", "token_expired")
    this.shared.now(this.annotated(Effect.logInfo("token expired")))
  }

  /** What a connection makes on first use: its background scope (closed with the connection). */
  private backgroundScope(): Background {
    return this.background ??= {
      scope: Scope.forkUnsafe(this.shared.scope),
      followed: undefined,
      pages: undefined,
      followerIds: 0,
      followerEnds: undefined
    }
  }

  // ---------------------------------------------------------------------------
  // client frames, one at a time

  /** Handles the waiting frames in order, then ends (the next frame starts another fiber). */
  private drain(): Effect.Effect<void> {
    return Effect.suspend(() => {
      const frame = this.inbox?.shift()
      if (frame === undefined) {
        // in the same step as the check: a frame arriving from now on starts the next fiber
        this.inbox = undefined
        this.working = false
        // a full bucket carries nothing worth keeping
        if (this.frames?.isFull(Date.now()) === true) this.frames = undefined
        if (this.isClosed) this.finish()
        return Effect.void
      }
      return Effect.andThen(this.handleFrame(frame), this.drain())
    })
  }

  /** The connection's frame budget: a client sending faster waits here, its inbox fills, and its socket is paused. */
  private frameBudget(): Effect.Effect<void> {
    return Effect.suspend(() => {
      const perSecond = this.shared.options.maxFramesPerSecond
      if (perSecond <= 0) return Effect.void
      const frames = (this.frames ??= TokenBucket.make(perSecond, perSecond, Date.now()))
      const wait = frames.take(Date.now())
      return wait === 0 ? Effect.void : Effect.andThen(Effect.sleep(wait), this.frameBudget())
    })
  }

  private handleFrame(frame: string | Uint8Array): Effect.Effect<void> {
    return Effect.andThen(
      this.frameBudget(),
      Effect.suspend(() => {
        this.handled++
        if (this.ws.isPaused && (this.inbox?.length ?? 0) <= INBOX_LOW_WATER) {
          this.pausedForInbox = false
          this.ws.resume()
        }
        return typeof frame === "string"
          ? this.handle(decodeClientFrame(frame))
          : this.refuse({ type: "error", code: "INVALID_MESSAGE", message: "binary frames are not supported; send JSON text frames" })
      }).pipe(
        // a bug in handling one frame answers that frame and the connection lives on; it never dies silently
        Effect.catchDefect((defect) =>
          Effect.andThen(
            this.refuse({ type: "error", code: "INTERNAL", message: "the server failed to handle this frame; the connection stays open" }),
            Effect.logError("frame handler failed").pipe(Effect.annotateLogs({ defect: String(defect).slice(0, 200) }))
          )
        )
      )
    ).pipe(
      // while the client does not read what it is sent, its frames wait (and its socket stops being read)
      Effect.andThen(this.output.drained)
    )
  }

  private handle(message: ClientMessage | ProtocolError): Effect.Effect<void> {
    switch (message.type) {
      case "error":
        return this.refuse(message)
      case "ping":
        return Effect.sync(() => this.reply({ type: "pong", timestamp: new Date().toISOString() }))
      case "start_agent":
        return this.startRun(message.agent, message.user_request, message)
      case "user_message":
        return this.startRun(undefined, message.text, message)
      case "authenticate":
        return this.authenticate(message.token, message.request_id)
      case "stop_agent":
        return this.stopRuns({ run_id: message.run_id, thread_id: message.thread_id }, message.request_id)
      case "resume_run":
        return this.resumeRun(message)
      case "list_runs":
        return this.listRuns(message)
      case "list_threads":
      case "get_thread":
      case "delete_thread":
        return this.threadRequest(message)
    }
  }

  private refuse(error: ProtocolError): Effect.Effect<void> {
    return Effect.sync(() => this.reply(error))
  }

  private refusal(
    code: ProtocolError["code"],
    message: string,
    request_id: string | undefined,
    extra: { readonly retry_after_ms?: number; readonly run_id?: string; readonly last_seq?: number } = {}
  ): Effect.Effect<void> {
    return this.refuse({ type: "error", code, message, ...withRequestId(request_id), ...extra })
  }

  private authenticate(token: string, request_id: string | undefined): Effect.Effect<void> {
    return this.shared.auth.verify(token).pipe(
      Effect.flatMap((next) =>
        next.user_id !== this.user_id
          ? Effect.andThen(
            this.refusal("AUTH_FAILED", "the token names another user; the connection keeps its current token", request_id),
            Effect.logInfo("authenticate refused").pipe(Effect.annotateLogs({ reason: "other_subject" }))
          )
          : Effect.sync(() => {
            this.expiresAt = next.expires_at
            this.watchExpiry()
            this.reply({ type: "authenticated", user_id: this.user_id, expires_at: isoOf(next.expires_at), ...withRequestId(request_id) })
          })
      ),
      Effect.catchTag("AuthError", (error) =>
        Effect.andThen(
          this.refusal("AUTH_FAILED", `${error.message}; the connection keeps its current token`, request_id),
          Effect.logInfo("authenticate refused").pipe(Effect.annotateLogs({ reason: error.reason }))
        ))
    )
  }

  private startRun(
    agent: string | undefined,
    request: string,
    ids: { readonly thread_id?: string | undefined; readonly request_id?: string | undefined }
  ): Effect.Effect<void> {
    return UserExecutionContext.make({ user_id: this.user_id, thread_id: ids.thread_id, request_id: ids.request_id }).pipe(
      Effect.flatMap((context) =>
        this.shared.engines.start(context, agent, request, {
          // a client-chosen request_id makes the start idempotent; a repeat is never rate-limited
          idempotent: ids.request_id !== undefined,
          threadGiven: ids.thread_id !== undefined,
          rateLimited: true,
          onAccepted: (accepted) =>
            Effect.sync(() =>
              this.reply({
                type: "run_accepted",
                run_id: accepted.run_id,
                thread_id: accepted.thread_id,
                request_id: accepted.request_id,
                agent_name: accepted.agent_name,
                ...(accepted.duplicate ? { duplicate: true } : {})
              })
            )
        })
      ),
      Effect.asVoid,
      Effect.catchTags({
        InvalidContextError: (e) => this.refusal("INVALID_MESSAGE", e.message, ids.request_id),
        UnknownAgentError: (e) => this.refusal("UNKNOWN_AGENT", e.message, ids.request_id),
        AdmissionError: (e) =>
          this.refusal(e.code, e.message, ids.request_id, e.retry_after_ms === undefined ? {} : { retry_after_ms: e.retry_after_ms })
      })
    )
  }

  /**
   * Stops wait for the stopped runs' terminal events in the background: the socket's other frames go on. A stop
   * received is carried out even when the socket closes right after: the fiber starts uninterruptible, so closing
   * the connection's background scope waits for the engine's stop (bounded by the engine: local runs end, remote
   * owners answer or time out) and interrupts only what follows it, the answer.
   */
  private stopRuns(selector: { readonly run_id?: string | undefined; readonly thread_id?: string | undefined }, request_id: string | undefined) {
    return Effect.asVoid(Effect.forkIn(
      this.shared.engines.stop({ user_id: this.user_id, ...selector }).pipe(
        // after the terminal events this connection gets: a run it follows sends them through its follower
        // (interruptible: a closing connection ends its followers, and this wait with them)
        Effect.flatMap((run_ids) =>
          Effect.interruptible(Effect.andThen(
            this.afterFollowers(run_ids),
            Effect.sync(() => this.reply({ type: "run_stopped", run_ids: [...run_ids], ...withRequestId(request_id) }))
          ))
        ),
        // runs on another instance that cannot be reached now (Redis down): not a false "nothing to stop"
        Effect.catchTag("RunControlUnavailableError", (e) => this.refusal("SERVER_BUSY", e.message, request_id, { retry_after_ms: e.retry_after_ms }))
      ),
      this.backgroundScope().scope,
      { uninterruptible: true }
    ))
  }

  private runNotReadable(error: RunLogReadError, request_id: string | undefined): Effect.Effect<void> {
    return error._tag === "RunExpiredError"
      ? this.refusal("RUN_EXPIRED", error.message, request_id, { run_id: error.run_id, last_seq: error.last_seq })
      : error._tag === "RunLogUnavailableError"
      ? this.refusal("LOG_UNAVAILABLE", error.message, request_id)
      : this.refusal("RUN_NOT_FOUND", error.message, request_id, { run_id: error.run_id })
  }

  // resume_run: one follower per run; pages of the replay are sent one at a time, each once the
  // socket flushed the previous one, so a replay to a reader that is away holds at most one page
  // in the server: it never trips the socket's bound nor weighs on the process budget
  private resumeRun(message: ResumeRun): Effect.Effect<void> {
    const c = this
    const log = this.shared.log
    const user_id = this.user_id
    return Effect.gen(function*() {
      const { after_seq, request_id, run_id } = message
      // ownership first: another user's run is indistinguishable from an unknown one
      const summary = yield* Effect.result(log.summary(user_id, run_id))
      if (summary._tag === "Failure") return yield* c.runNotReadable(summary.failure, request_id)
      if (after_seq > summary.success.last_seq) {
        return yield* c.refusal(
          "INVALID_MESSAGE",
          `invalid resume_run: after_seq ${after_seq} is beyond the run's last seq ${summary.success.last_seq}`,
          request_id,
          { run_id, last_seq: summary.success.last_seq }
        )
      }
      const t = c.tracked?.runs.get(run_id)
      if ((t === undefined || t.follower === 0) && c.followers >= MAX_FOLLOWED_RUNS) {
        return yield* c.refusal("RATE_LIMITED", `at most ${MAX_FOLLOWED_RUNS} runs can be resumed at once on one connection`, request_id, {
          retry_after_ms: 1000
        })
      }
      if (t !== undefined && t.sent.ranges() >= SentSeqs.MAX_RANGES) {
        return yield* c.refusal("RATE_LIMITED", `too many partial resumes of this run on one connection; resume it on a new connection`, request_id, {
          run_id,
          retry_after_ms: 1000
        })
      }
      const background = c.backgroundScope()
      const followed = background.followed ??= yield* Scope.provide(FiberMap.make<string>(), background.scope)
      const pages = background.pages ??= Semaphore.makeUnsafe(1)
      // from here on the run's live events are left to the follower, which reads them from the log
      const state = c.track(run_id)
      if (state.follower === 0) c.followers++
      // a follower already sending this run is replaced; its request gets an answer saying so
      state.replaced?.()
      const id = ++background.followerIds
      state.follower = id
      state.replaced = () =>
        c.reply({
          type: "error",
          code: "RESUME_REPLACED",
          message: "a later resume_run of this run on this connection took over from this one",
          run_id,
          ...withRequestId(request_id)
        })
      const stream = follow(log, user_id, run_id, after_seq, { pageLimits: c.shared.replayPage })
      const body = Stream.runForEachArray(stream, (items) =>
        pages.withPermit(Effect.andThen(
          c.output.flushed,
          Effect.sync(() => {
            // replaced (and answered RESUME_REPLACED): the later follower sends the run from now on
            if (state.follower !== id) return
            for (const item of items) {
              if (item._tag === "Idle") continue
              if (item._tag === "CaughtUp") {
                const { last_seq, status } = item.summary
                c.reply({ type: "run_resumed", run_id, after_seq, last_seq, status, ...withRequestId(request_id) })
                continue
              }
              // what this connection already sent of the run is not sent again
              const seq = item.event.seq
              if (state.sent.has(seq)) continue
              state.sent.add(seq)
              c.output.send(item.event.frame)
            }
          })
        ))).pipe(
          Effect.catchTags({
            RunNotFoundError: (e) => c.runNotReadable(e, request_id),
            RunExpiredError: (e) => c.runNotReadable(e, request_id),
            RunLogUnavailableError: (e) => c.runNotReadable(e, request_id),
            AfterSeqError: (e) => c.refusal("INVALID_MESSAGE", `invalid resume_run: ${e.message}`, request_id, { run_id })
          }),
          Effect.ensuring(Effect.sync(() => {
            // a later resume of the same run took over: it owns the state now
            if (state.follower !== id) return
            state.follower = 0
            state.replaced = undefined
            c.followers--
            // the run received events until now (it was kept while followed)
            c.track(run_id)
            const waiting = background.followerEnds?.get(run_id)
            if (waiting !== undefined) {
              background.followerEnds!.delete(run_id)
              for (const done of waiting) done()
            }
          }))
        )
      yield* FiberMap.run(followed, run_id, body)
    })
  }

  private listRuns(message: ListRuns): Effect.Effect<void> {
    return Effect.flatMap(
      this.shared.log.list(this.user_id, { thread_id: message.thread_id, status: message.status, limit: message.limit }),
      (runs) =>
        Effect.sync(() =>
          this.reply({
            type: "runs",
            runs: runs.map(({ user_id: _, ...run }) => run),
            ...withRequestId(message.request_id)
          })
        )
    ).pipe(Effect.catchTag("RunLogUnavailableError", (e) => this.runNotReadable(e, message.request_id)))
  }

  // threads (issue 14): answered in the background by server/ThreadRequests.ts
  private threadRequest(message: Parameters<ThreadHandler>[0]): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.threads !== undefined) return this.threads(message)
      const background = this.backgroundScope()
      return Effect.flatMap(
        Scope.provide(ThreadRequests.makeHandler(this.user_id, (reply) => this.reply(reply)), background.scope),
        (threads) => {
          this.threads = threads
          return threads(message)
        }
      )
    })
  }
}

type ThreadHandler = ReturnType<typeof ThreadRequests.makeHandler> extends Effect.Effect<infer H, infer _E, infer _R> ? H : never

/**
 * Takes over an accepted socket: sends `connection_established`, registers
 * the connection with the bridge and arms its token's expiry. From here on
 * the socket's events drive it; it ends when the socket closes
 * (`Shared.onClose`, then the bridge forgets it and its background work is
 * interrupted).
 */
export const open = (shared: Shared, ws: WebSocket, socket: Duplex, verified: VerifiedToken): Connection => {
  const connection = new Conn(shared, ws, socket, verified)
  connection.open()
  return connection
}
