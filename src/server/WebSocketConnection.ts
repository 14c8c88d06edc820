/**
 * One accepted WebSocket connection, as one fiber.
 *
 * Sends `connection_established`, registers with the bridge (so the user's run
 * events reach it), then decodes client frames one at a time, in order. A bad
 * frame gets an `error` frame and the connection lives on. When the socket
 * closes, the fiber's scope closes and the bridge forgets the connection.
 *
 * Also here: where the token is taken from at the handshake, and which
 * subprotocol the server selects.
 *
 * @module
 */
import { Cause, Effect, FiberHandle, FiberMap, FiberSet, Queue, Semaphore, Stream } from "effect"
import type { IncomingMessage } from "node:http"
import type { Duplex } from "node:stream"
import type { WebSocket } from "ws"
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
import { WebSocketBridge } from "../services/WebSocketBridge.ts"
import * as TokenBucket from "../layers/TokenBucket.ts"
import * as SentSeqs from "./SentSeqs.ts"
import * as SocketOutput from "./SocketOutput.ts"
import * as ThreadRequests from "./ThreadRequests.ts"

/** Client frames waiting to be handled before the socket stops reading (backpressure, nothing dropped). */
const INBOX_HIGH_WATER = 64
/** Reading resumes when the waiting frames fall to this. */
const INBOX_LOW_WATER = 8

const TOKEN_PROTOCOL_PREFIX = "jwt."

/** Runs whose sent `seq` range one connection remembers (oldest forgotten first; followed runs are kept). */
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

/** Longest single sleep of the expiry timer (timers overflow past 2^31-1 ms). */
const MAX_TIMER_MS = 2 ** 31 - 1

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
}

/** Wraps an accepted socket in its write path (every frame to it goes through `output`). */
export const make = (
  ws: WebSocket,
  socket: Duplex & SocketOutput.CorkableSocket,
  limits: SocketOutput.OutputLimits,
  budget?: SocketOutput.OutputBudget
): Connection => ({
  ws,
  socket,
  output: SocketOutput.make(ws, socket, limits, budget),
  limits,
  liveness: { pong: true, handled: 0, pausedForInbox: false }
})

/** Runs one connection until its socket closes. */
export const run = (connection: Connection, verified: VerifiedToken, options: ConnectionOptions) =>
  Effect.suspend(() => {
    const connection_id = UserExecutionContext.generateId("conn")
    const user_id = verified.user_id
    return runWithId(connection, verified, connection_id, options).pipe(Effect.annotateLogs({ user_id, connection_id }))
  })

const runWithId = (connection: Connection, verified: VerifiedToken, connection_id: string, options: ConnectionOptions) => {
  const { liveness, output, ws } = connection
  const user_id = verified.user_id
  return Effect.gen(function*() {
    const bridge = yield* WebSocketBridge
    const engines = yield* ExecutionEngineFactory
    const auth = yield* Auth
    const log = yield* RunLog
    const openedAt = Date.now()
    const inbox = yield* Queue.unbounded<string | Uint8Array, Cause.Done>()
    let closeCode = 1006
    let socketError: string | undefined

    // every frame to this socket, events and replies alike, takes the one write path
    const reply = (message: ServerMessage) => output.send(JSON.stringify(message))

    // Node callbacks: nothing a client sends may throw out of them
    ws.on("message", (data, isBinary) => {
      try {
        const frame = isBinary ? new Uint8Array(data as Buffer) : (data as Buffer).toString("utf8")
        Queue.offerUnsafe(inbox, frame)
        // a client sending faster than frames are handled is slowed down by TCP, not by dropping frames
        if (Queue.sizeUnsafe(inbox) >= INBOX_HIGH_WATER && !ws.isPaused) {
          liveness.pausedForInbox = true
          ws.pause()
        }
      } catch {
        output.destroy("protocol_error")
      }
    })
    ws.on("pong", () => {
      liveness.pong = true
    })
    ws.on("error", (error) => {
      socketError = error.message
    })
    ws.on("close", (code) => {
      closeCode = code
      output.release()
      Queue.endUnsafe(inbox)
    })
    // the socket may have closed before the listeners were attached
    if (ws.readyState === ws.CLOSING || ws.readyState === ws.CLOSED) Queue.endUnsafe(inbox)

    reply({
      type: "connection_established",
      connection_id,
      user_id,
      protocol_version: PROTOCOL_VERSION,
      max_message_bytes: options.maxMessageBytes,
      server_epoch: log.epoch
    })

    // per run, what this connection sent: each event reaches the connection at most once
    const tracked = new Map<string, Tracked>()
    let followers = 0
    const track = (run_id: string): Tracked => {
      let t = tracked.get(run_id)
      if (t !== undefined) return t
      if (tracked.size >= MAX_TRACKED_RUNS) {
        for (const [id, old] of tracked) {
          if (old.follower === 0) {
            tracked.delete(id)
            break
          }
        }
      }
      t = { sent: SentSeqs.make(), follower: 0, replaced: undefined }
      tracked.set(run_id, t)
      return t
    }
    // the bridge's live events: skipped when a follower sends the run, or when already sent
    const sendLive = (frame: string, event?: AgentEvent) => {
      if (event === undefined) return output.send(frame)
      const t = track(event.run_id)
      if (t.follower !== 0 || t.sent.has(event.seq)) return
      t.sent.add(event.seq)
      output.send(frame)
    }
    yield* bridge.register({ id: connection_id, user_id, send: sendLive })
    yield* Effect.logInfo("connection opened")

    const refuse = (error: ProtocolError) => Effect.sync(() => reply(error))
    const withRequestId = (request_id: string | undefined) => (request_id === undefined ? {} : { request_id })

    // the token's expiry: without a refresh before it, the connection ends with TOKEN_EXPIRED / 4001
    let expiresAt = verified.expires_at
    const expiry = yield* FiberHandle.make()
    const watchExpiry: Effect.Effect<void> = Effect.suspend(() => {
      const left = expiresAt + options.clockSkewMs - Date.now()
      if (left > 0) return Effect.andThen(Effect.sleep(Math.min(left, MAX_TIMER_MS)), watchExpiry)
      return Effect.andThen(
        Effect.sync(() => {
          reply({ type: "error", code: "TOKEN_EXPIRED", message: "the connection's token expired; reconnect with a fresh token, or send authenticate before expiry" })
          output.close(CLOSE_TOKEN_EXPIRED, "token expired", "token_expired")
        }),
        Effect.logInfo("token expired")
      )
    })
    yield* FiberHandle.run(expiry, watchExpiry)

    const authenticate = (token: string, request_id: string | undefined) =>
      auth.verify(token).pipe(
        Effect.flatMap((next) =>
          next.user_id !== user_id
            ? Effect.andThen(
              refuse({ type: "error", code: "AUTH_FAILED", message: "the token names another user; the connection keeps its current token", ...withRequestId(request_id) }),
              Effect.logInfo("authenticate refused").pipe(Effect.annotateLogs({ reason: "other_subject" }))
            )
            : Effect.gen(function*() {
              expiresAt = next.expires_at
              yield* FiberHandle.run(expiry, watchExpiry)
              reply({ type: "authenticated", user_id, expires_at: isoOf(next.expires_at), ...withRequestId(request_id) })
            })
        ),
        Effect.catchTag("AuthError", (error) =>
          Effect.andThen(
            refuse({ type: "error", code: "AUTH_FAILED", message: `${error.message}; the connection keeps its current token`, ...withRequestId(request_id) }),
            Effect.logInfo("authenticate refused").pipe(Effect.annotateLogs({ reason: error.reason }))
          ))
      )

    // stops wait for the stopped runs' terminal events in the background: the socket's other frames go on
    const background = yield* FiberSet.make()

    const refusal = (
      code: ProtocolError["code"],
      message: string,
      request_id: string | undefined,
      extra: { readonly retry_after_ms?: number; readonly run_id?: string; readonly last_seq?: number } = {}
    ) =>
      refuse({ type: "error", code, message, ...withRequestId(request_id), ...extra })

    const startRun = (
      agent: string | undefined,
      request: string,
      ids: { readonly thread_id?: string | undefined; readonly request_id?: string | undefined }
    ) =>
      UserExecutionContext.make({ user_id, thread_id: ids.thread_id, request_id: ids.request_id }).pipe(
        Effect.flatMap((context) =>
          engines.start(context, agent, request, {
            // a client-chosen request_id makes the start idempotent; a repeat is never rate-limited
            idempotent: ids.request_id !== undefined,
            threadGiven: ids.thread_id !== undefined,
            rateLimited: true,
            onAccepted: (accepted) =>
              Effect.sync(() =>
                reply({
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
          InvalidContextError: (e) => refusal("INVALID_MESSAGE", e.message, ids.request_id),
          UnknownAgentError: (e) => refusal("UNKNOWN_AGENT", e.message, ids.request_id),
          AdmissionError: (e) =>
            refusal(e.code, e.message, ids.request_id, e.retry_after_ms === undefined ? {} : { retry_after_ms: e.retry_after_ms })
        })
      )

    const stopRuns = (selector: { readonly run_id?: string | undefined; readonly thread_id?: string | undefined }, request_id: string | undefined) =>
      FiberSet.run(
        background,
        engines.stop({ user_id, ...selector }).pipe(
          Effect.flatMap((run_ids) => Effect.sync(() => reply({ type: "run_stopped", run_ids: [...run_ids], ...withRequestId(request_id) }))),
          // runs on another instance that cannot be reached now (Redis down): not a false "nothing to stop"
          Effect.catchTag("RunControlUnavailableError", (e) => refusal("SERVER_BUSY", e.message, request_id, { retry_after_ms: e.retry_after_ms }))
        )
      ).pipe(Effect.asVoid)

    const runNotReadable = (error: RunLogReadError, request_id: string | undefined) =>
      error._tag === "RunExpiredError"
        ? refusal("RUN_EXPIRED", error.message, request_id, { run_id: error.run_id, last_seq: error.last_seq })
        : error._tag === "RunLogUnavailableError"
        ? refusal("LOG_UNAVAILABLE", error.message, request_id)
        : refusal("RUN_NOT_FOUND", error.message, request_id, { run_id: error.run_id })

    // resume_run: one follower per run; pages of the replay are sent one at a time, each once the
    // socket flushed the previous one, so a replay to a reader that is away holds at most one page
    // in the server: it never trips the socket's bound nor weighs on the process budget
    const followed = yield* FiberMap.make<string>()
    const replayPage = {
      maxBytes: Math.min(REPLAY_PAGE_BYTES, Math.floor(connection.limits.maxSocketBytes / 8)),
      maxEvents: Math.max(1, Math.min(FOLLOW_PAGE.maxEvents, Math.floor(connection.limits.maxSocketBytes / 8 / SocketOutput.FRAME_OVERHEAD_BYTES)))
    }
    const pages = Semaphore.makeUnsafe(1)
    let followerIds = 0
    const resumeRun = (message: ResumeRun) =>
      Effect.gen(function*() {
        const { after_seq, request_id, run_id } = message
        // ownership first: another user's run is indistinguishable from an unknown one
        const summary = yield* Effect.result(log.summary(user_id, run_id))
        if (summary._tag === "Failure") return yield* runNotReadable(summary.failure, request_id)
        if (after_seq > summary.success.last_seq) {
          return yield* refusal(
            "INVALID_MESSAGE",
            `invalid resume_run: after_seq ${after_seq} is beyond the run's last seq ${summary.success.last_seq}`,
            request_id,
            { run_id, last_seq: summary.success.last_seq }
          )
        }
        const t = tracked.get(run_id)
        if ((t === undefined || t.follower === 0) && followers >= MAX_FOLLOWED_RUNS) {
          return yield* refusal("RATE_LIMITED", `at most ${MAX_FOLLOWED_RUNS} runs can be resumed at once on one connection`, request_id, {
            retry_after_ms: 1000
          })
        }
        if (t !== undefined && t.sent.ranges() >= SentSeqs.MAX_RANGES) {
          return yield* refusal("RATE_LIMITED", `too many partial resumes of this run on one connection; resume it on a new connection`, request_id, {
            run_id,
            retry_after_ms: 1000
          })
        }
        // from here on the run's live events are left to the follower, which reads them from the log
        const state = track(run_id)
        if (state.follower === 0) followers++
        // a follower already sending this run is replaced; its request gets an answer saying so
        state.replaced?.()
        const id = ++followerIds
        state.follower = id
        state.replaced = () =>
          reply({
            type: "error",
            code: "RESUME_REPLACED",
            message: "a later resume_run of this run on this connection took over from this one",
            run_id,
            ...withRequestId(request_id)
          })
        const stream = follow(log, user_id, run_id, after_seq, { pageLimits: replayPage })
        const body = Stream.runForEachArray(stream, (items) =>
          pages.withPermit(Effect.andThen(
            output.flushed,
            Effect.sync(() => {
              for (const item of items) {
                if (item._tag === "Idle") continue
                if (item._tag === "CaughtUp") {
                  const { last_seq, status } = item.summary
                  reply({ type: "run_resumed", run_id, after_seq, last_seq, status, ...withRequestId(request_id) })
                  continue
                }
                // what this connection already sent of the run is not sent again
                const seq = item.event.seq
                if (state.sent.has(seq)) continue
                state.sent.add(seq)
                output.send(item.event.frame)
              }
            })
          ))).pipe(
            Effect.catchTags({
              RunNotFoundError: (e) => runNotReadable(e, request_id),
              RunExpiredError: (e) => runNotReadable(e, request_id),
              RunLogUnavailableError: (e) => runNotReadable(e, request_id),
              AfterSeqError: (e) => refusal("INVALID_MESSAGE", `invalid resume_run: ${e.message}`, request_id, { run_id })
            }),
            Effect.ensuring(Effect.sync(() => {
              // a later resume of the same run took over: it owns the state now
              if (state.follower !== id) return
              state.follower = 0
              state.replaced = undefined
              followers--
            }))
          )
        yield* FiberMap.run(followed, run_id, body)
      })

    const listRuns = (message: ListRuns) =>
      Effect.flatMap(log.list(user_id, { thread_id: message.thread_id, status: message.status, limit: message.limit }), (runs) =>
        Effect.sync(() =>
          reply({
            type: "runs",
            runs: runs.map(({ user_id: _, ...run }) => run),
            ...withRequestId(message.request_id)
          })
        )).pipe(Effect.catchTag("RunLogUnavailableError", (e) => runNotReadable(e, message.request_id)))

    // threads (issue 14): answered in the background by server/ThreadRequests.ts
    const threads = yield* ThreadRequests.makeHandler(user_id, reply)

    const handle = (message: ClientMessage | ProtocolError): Effect.Effect<void> => {
      switch (message.type) {
        case "error":
          return refuse(message)
        case "ping":
          return Effect.sync(() => reply({ type: "pong", timestamp: new Date().toISOString() }))
        case "start_agent":
          return startRun(message.agent, message.user_request, message)
        case "user_message":
          return startRun(undefined, message.text, message)
        case "authenticate":
          return authenticate(message.token, message.request_id)
        case "stop_agent":
          return stopRuns({ run_id: message.run_id, thread_id: message.thread_id }, message.request_id)
        case "resume_run":
          return resumeRun(message)
        case "list_runs":
          return listRuns(message)
        case "list_threads":
        case "get_thread":
        case "delete_thread":
          return threads(message)
      }
    }

    // the connection's frame budget: a client sending faster waits here, its inbox fills, and its socket is paused
    const frames = TokenBucket.make(options.maxFramesPerSecond, options.maxFramesPerSecond, Date.now())
    const frameBudget: Effect.Effect<void> = Effect.suspend(() => {
      if (options.maxFramesPerSecond <= 0) return Effect.void
      const wait = frames.take(Date.now())
      return wait === 0 ? Effect.void : Effect.andThen(Effect.sleep(wait), frameBudget)
    })

    const next: Effect.Effect<void, Cause.Done> = Effect.flatMap(Queue.take(inbox), (frame) =>
      Effect.andThen(frameBudget, Effect.suspend(() => {
        liveness.handled++
        if (ws.isPaused && Queue.sizeUnsafe(inbox) <= INBOX_LOW_WATER) {
          liveness.pausedForInbox = false
          ws.resume()
        }
        return typeof frame === "string"
          ? handle(decodeClientFrame(frame))
          : refuse({ type: "error", code: "INVALID_MESSAGE", message: "binary frames are not supported; send JSON text frames" })
      }).pipe(
        // a bug in handling one frame answers that frame and the connection lives on; it never dies silently
        Effect.catchDefect((defect) =>
          Effect.andThen(
            refuse({ type: "error", code: "INTERNAL", message: "the server failed to handle this frame; the connection stays open" }),
            Effect.logError("frame handler failed").pipe(Effect.annotateLogs({ defect: String(defect).slice(0, 200) }))
          ))
      )).pipe(
        // while the client does not read what it is sent, its frames wait (and its socket stops being read)
        Effect.andThen(output.drained)
      ))
    yield* Effect.forever(next).pipe(Effect.catchTag("Done", () => Effect.void))

    const reason = output.closeReason()
    const limit = output.limit()
    yield* Effect.logInfo("connection closed").pipe(
      Effect.annotateLogs({
        code: closeCode,
        reason: reason ?? (socketError !== undefined && /max payload/i.test(socketError)
          ? "message_too_big"
          : socketError !== undefined
          ? "protocol_error"
          : closeCode === 1000 || closeCode === 1001
          ? "client_closed"
          : "client_gone"),
        duration_ms: Date.now() - openedAt,
        ...(limit === undefined ? {} : { limit }),
        ...(socketError === undefined ? {} : { error: socketError })
      })
    )
  }).pipe(
    Effect.scoped,
    Effect.onInterrupt(() =>
      Effect.andThen(
        Effect.sync(() => output.destroy("server_shutdown")),
        Effect.suspend(() => Effect.logInfo("connection closed").pipe(Effect.annotateLogs({ reason: output.closeReason() ?? "server_shutdown" })))
      )
    ),
    Effect.tapCause((cause) =>
      Cause.hasInterruptsOnly(cause) ? Effect.void : Effect.logError("connection failed", Cause.pretty(cause).slice(0, 2000))
    ),
    // however the fiber ends, its socket ends with it: no connection outlives its handler
    Effect.ensuring(Effect.sync(() => output.destroy("server_error")))
  )
}
