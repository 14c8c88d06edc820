/**
 * The server: one Node `http.Server` carrying the HTTP routes (through Effect's
 * router) and `GET /ws` (through `ws` directly: the fan-out hot path stays a
 * plain `ws.send` of a frame encoded once by the bridge).
 *
 * The handshake is authenticated before any socket is accepted: a missing or
 * bad token gets `401` on the raw connection, a request target that is not a
 * valid URL `400`; every refusal is logged (without the token). Nothing a client
 * sends can throw out of the `upgrade` listener. Frames over `maxMessageBytes`
 * close the connection with 1009 (`ws`'s `maxPayload`).
 *
 * Every frame to a socket takes its one write path (`SocketOutput`): the
 * per-socket bound, the process-wide budget of unsent bytes and corking.
 *
 * Every `heartbeatIntervalMs` each socket is judged (`Heartbeat.judge`) and
 * pinged once its previous ping was answered; one that made no progress at all
 * and whose ping is overdue is terminated (`heartbeat_timeout`).
 *
 * A user's connections are capped (`maxConnectionsPerUser`): a new one over
 * the cap is accepted and the user's oldest is closed with 4009, so reloading
 * tabs never locks a user out behind dead sockets.
 *
 * Startup failures are typed (`ServerStartError`). Shutdown, when the layer's
 * scope closes: admission closes (new runs get `SHUTTING_DOWN`; other frames are
 * still handled), `/ready` turns 503, listening stops, runs in flight get
 * `shutdownGraceMs` to finish, the rest are stopped (`agent_stopped
 * server_shutdown`, each still sends its terminal events), then sockets are
 * closed with 1001 and, after a second, terminated.
 *
 * @module
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Deferred, Effect, Exit, FiberSet, Layer, Option, Schedule, Scope } from "effect"
import { HttpRouter } from "effect/http"
import { createServer, type IncomingMessage, STATUS_CODES } from "node:http"
import { Socket } from "node:net"
import type { Duplex } from "node:stream"
import { type WebSocket, WebSocketServer } from "ws"
import { AgentInstanceFactory } from "../services/AgentInstanceFactory.ts"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import { AgentwireServer, ServerStartError } from "../services/AgentwireServer.ts"
import { ConversationStore } from "../services/ConversationStore.ts"
import { Auth, AuthError, type VerifiedToken } from "../services/Auth.ts"
import { isOriginAllowed } from "../services/OriginPolicy.ts"
import { RunAdmission } from "../services/RunAdmission.ts"
import { ExecutionEngineFactory } from "../services/ExecutionEngineFactory.ts"
import { RunLog } from "../services/RunLog.ts"
import { WebSocketBridge } from "../services/WebSocketBridge.ts"
import * as Heartbeat from "./Heartbeat.ts"
import * as HttpRoutes from "./HttpRoutes.ts"
import * as SocketOutput from "./SocketOutput.ts"
import * as WebPage from "./WebPage.ts"
import * as ThreadRoutes from "./ThreadRoutes.ts"
import * as WebSocketConnection from "./WebSocketConnection.ts"

/** Sockets pinged per slice of a heartbeat sweep. */
const HEARTBEAT_SLICE = 256

/** Resumes on a later turn of the event loop (`Effect.yieldNow` may resume in the same turn), so I/O runs between slices. */
const nextMacrotask: Effect.Effect<void> = Effect.callback<void>((resume) => {
  const timer = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(timer))
})

/** How long closing sockets get to finish the close handshake (shutdown, replaced connections). */
const CLOSE_GRACE_MS = 1000
const CLOSE_GRACE = "1 second"

/** At shutdown, how long stopped runs get to send their terminal events (an agent ignoring interruption is not waited for longer). */
const STOP_DEADLINE = "5 seconds"

/**
 * At shutdown, how long connections' followers (`resume_run`) of ended runs get to send them to their end before the
 * sockets are closed (a reader that does not read paces its follower: it is not waited for longer).
 */
const FOLLOWERS_DEADLINE = "1 second"

/** Close code for a user's oldest connection when a new one goes over `AGENTWIRE_MAX_CONNECTIONS_PER_USER`. */
export const CLOSE_REPLACED = 4009

/** `/ready` reports the event loop down when it was blocked longer than this within the last second or two. */
export const READY_MAX_EVENT_LOOP_DELAY_MS = 500

/** Interval of the event-loop probe timer. */
const LOOP_PROBE_MS = 100

const reasonOf = (code: string | undefined): ServerStartError["reason"] =>
  code === "EADDRINUSE"
    ? "AddressInUse"
    : code === "EACCES"
    ? "PermissionDenied"
    : code === "EADDRNOTAVAIL" || code === "ENOTFOUND"
    ? "AddressNotAvailable"
    : "Unknown"

/** Answers a refused handshake on the raw connection and closes it. Never throws. */
const refuseUpgrade = (socket: Duplex, status: number, code: string, message: string, headers: Record<string, string> = {}) => {
  try {
    if (socket.destroyed) return
    const body = JSON.stringify({ error: { code, message } })
    const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("")
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}\r\n` +
        `Connection: close\r\nContent-Type: application/json\r\n${extra}` +
        `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
    )
  } catch {
    socket.destroy()
  }
}

/**
 * A handshake socket's error listener. One function for all: a closure here would keep the whole
 * handshake (the request, its headers) alive as long as the socket, about 1 KiB per connection.
 */
function destroyOnError(this: Duplex) {
  this.destroy()
}

/** The path of a request target, or undefined when the target is not a valid URL. Never throws. */
export const targetOf = (target: string | undefined): URL | undefined => URL.parse(target ?? "/", "http://localhost") ?? undefined

/** What the heartbeat sees of a connection now. */
const observe = (connection: WebSocketConnection.Connection, at: number): Heartbeat.Observation => {
  const socket = connection.socket as Duplex & { readonly bytesRead?: number; readonly bytesWritten?: number }
  const backlog = socket.writableLength
  return {
    at,
    pong: connection.liveness.pong,
    bytesRead: socket.bytesRead ?? 0,
    // bytes the kernel took (Node counts queued bytes in bytesWritten)
    dispatched: (socket.bytesWritten ?? 0) - backlog,
    backlog,
    handled: connection.liveness.handled,
    pausedForInbox: connection.liveness.pausedForInbox
  }
}

/** Listens on the configured host and port; requires the agent runtime, auth and config. */
export const layer: Layer.Layer<
  AgentwireServer,
  ServerStartError,
  AgentwireConfig | Auth | ExecutionEngineFactory | AgentInstanceFactory | WebSocketBridge | RunAdmission | RunLog
> = Layer.effect(
  AgentwireServer,
  Effect.gen(function*() {
    const config = yield* AgentwireConfig
    const auth = yield* Auth
    const engines = yield* ExecutionEngineFactory
    const bridge = yield* WebSocketBridge
    const runLog = yield* RunLog
    // every handshake fiber and every fiber handling a connection's frames lives here; all are interrupted at shutdown
    const runFork = yield* FiberSet.makeRuntime<WebSocketBridge | ExecutionEngineFactory | Auth | RunAdmission | RunLog>()
    // connections' background work (stop waits, resumes, thread requests): interrupted after the sockets closed
    const connectionScope = yield* Scope.fork(yield* Effect.scope)
    let shuttingDown = false
    let server: ReturnType<typeof createServer> | undefined

    const budget = SocketOutput.makeBudget(config.maxProcessBufferBytes)
    const limits = SocketOutput.limitsFor(config.maxSocketBufferBytes, config.maxProcessBufferBytes)

    // event-loop delay: how late a 100 ms timer fires; the worst of the current and the last full second
    const loopDelay = yield* Effect.acquireRelease(
      Effect.sync(() => {
        let last = performance.now()
        let windowStart = last
        let windowWorst = 0
        let previousWorst = 0
        const timer = setInterval(() => {
          const now = performance.now()
          windowWorst = Math.max(windowWorst, now - last - LOOP_PROBE_MS)
          last = now
          if (now - windowStart >= 1000) {
            previousWorst = windowWorst
            windowWorst = 0
            windowStart = now
          }
        }, LOOP_PROBE_MS)
        timer.unref()
        return { timer, worstMs: () => Math.max(previousWorst, windowWorst, performance.now() - last - LOOP_PROBE_MS) }
      }),
      ({ timer }) => Effect.sync(() => clearInterval(timer))
    )

    // history (issue 14): not required; a degraded database degrades history, not streaming
    const history = Option.getOrUndefined(yield* Effect.serviceOption(ConversationStore))

    const readiness: Effect.Effect<HttpRoutes.Readiness> = Effect.gen(function*() {
      const admissionOpen = yield* engines.admissionOpen
      const listening = server?.listening === true && !shuttingDown
      const worstDelayMs = Math.max(0, loopDelay.worstMs())
      const logStats = yield* runLog.stats
      const loopUp = worstDelayMs <= READY_MAX_EVENT_LOOP_DELAY_MS
      return {
        shuttingDown,
        components: {
          http: { status: listening ? "up" : "down", required: true },
          admission: { status: admissionOpen ? "up" : "down", required: true, active_runs: yield* engines.activeRuns },
          event_loop: {
            status: loopUp ? "up" : "down",
            required: true,
            max_delay_ms: Math.round(worstDelayMs),
            threshold_ms: READY_MAX_EVENT_LOOP_DELAY_MS
          },
          bridge: { status: "up", required: true, connections: yield* bridge.connectionCount() },
          run_log: {
            // a log whose active runs alone fill the budget fails the runs that append (LOG_FULL)
            status: logStats.bytes <= logStats.maxBytes ? "up" as const : "down" as const,
            required: false,
            epoch: runLog.epoch,
            runs: logStats.runs,
            active_runs: logStats.activeRuns,
            bytes: logStats.bytes,
            budget_bytes: logStats.maxBytes,
            tombstones: logStats.tombstones,
            evicted_runs: logStats.evicted
          },
          // a shared log (AGENTWIRE_REDIS_URL): its store is required; while it is down runs go on,
          // their events buffered in process (AGENTWIRE_REDIS_BUFFER_EVENTS)
          ...(logStats.store === undefined ? {} : {
            redis: {
              status: logStats.store.up ? "up" as const : "down" as const,
              required: true,
              buffered_events: logStats.store.bufferedEvents
            }
          }),
          ...(history === undefined ? {} : { history: yield* Effect.map(history.health, ({ status, ...facts }) => ({ status: status === "up" ? "up" as const : "down" as const, required: false, state: status, ...facts })) }),
          send_buffers: {
            status: budget.tracked() <= budget.maxProcessBytes ? "up" : "down",
            required: false,
            tracked_bytes: budget.tracked(),
            tracked_sockets: budget.trackedSockets(),
            budget_bytes: budget.maxProcessBytes,
            dropped_sockets: budget.dropped()
          }
        }
      }
    })

    const routes = yield* HttpRoutes.make({
      maxMessageBytes: config.maxMessageBytes,
      secretSource: Option.isSome(config.jwtSecret) ? "configured" : "generated",
      readiness,
      sseHeartbeatMs: config.sseHeartbeatMs,
      // a user's SSE streams are capped like their sockets (counted apart from them)
      maxSseStreamsPerUser: config.maxConnectionsPerUser
    })
    // the thread API (issue 14) and the web page (issue 13) beside the run routes
    const httpEffect = yield* HttpRouter.toHttpEffect(Layer.mergeAll(routes, WebPage.routes, yield* ThreadRoutes.make))
    // HTTP requests run in a scope of their own, closed last at shutdown: during the drain the
    // routes still answer (/ready 503, new runs SHUTTING_DOWN) instead of failing with the layer's scope
    const httpScope = yield* Scope.make()
    const onRequest = yield* NodeHttpServer.makeHandler(httpEffect, { scope: httpScope })

    const connections = new Set<WebSocketConnection.Connection>()
    const allClosed = yield* Deferred.make<void>()
    const wss = new WebSocketServer({
      noServer: true,
      maxPayload: config.maxMessageBytes,
      perMessageDeflate: false,
      clientTracking: false,
      handleProtocols: WebSocketConnection.selectProtocol,
      // its events go to the connection without per-socket listeners
      WebSocket: WebSocketConnection.ServerSocket
    })

    // what the heartbeat remembers of each connection between sweeps
    const beats = new WeakMap<WebSocketConnection.Connection, Heartbeat.State>()
    // in slices, yielding between them: one sweep over many sockets must not stall every other connection
    const heartbeat = Effect.gen(function*() {
      let n = 0
      for (const connection of Array.from(connections)) {
        const verdict = Heartbeat.judge(beats.get(connection), observe(connection, performance.now()), config.heartbeatIntervalMs)
        if (verdict._tag === "Dead") {
          connection.output.destroy("heartbeat_timeout")
        } else {
          beats.set(connection, verdict.state)
          if (verdict.ping) {
            connection.liveness.pong = false
            try {
              connection.ws.ping()
            } catch {
              connection.output.destroy("heartbeat_timeout")
            }
          }
        }
        if (++n % HEARTBEAT_SLICE === 0) yield* nextMacrotask
      }
    })
    if (config.heartbeatIntervalMs > 0) {
      yield* Effect.forkScoped(Effect.repeat(heartbeat, Schedule.spaced(config.heartbeatIntervalMs)))
    }

    // each user's open connections, oldest first
    const byUser = new Map<string, Array<WebSocketConnection.Connection>>()
    // one server's connections share their listeners, methods and settings: an idle one holds no fiber
    const shared = yield* WebSocketConnection.makeShared({
      options: {
        maxMessageBytes: config.maxMessageBytes,
        clockSkewMs: config.jwtClockSkewSeconds * 1000,
        maxFramesPerSecond: config.maxFramesPerSecond
      },
      limits,
      budget,
      fork: (effect) => void runFork(effect),
      scope: connectionScope,
      onClose: (connection) => {
        const list = byUser.get(connection.user_id)
        const at = list?.indexOf(connection) ?? -1
        if (list !== undefined && at >= 0) list.splice(at, 1)
        if (list !== undefined && list.length === 0) byUser.delete(connection.user_id)
        connections.delete(connection)
        if (shuttingDown && connections.size === 0) Deferred.doneUnsafe(allClosed, Effect.void)
      }
    })
    const accept = (ws: WebSocket, verified: VerifiedToken, socket: Duplex) => {
      const connection = WebSocketConnection.open(shared, ws, socket, verified)
      connections.add(connection)
      // a new array of exactly the user's sockets: a pushed-to array reserves 17 slots (about 0.1 KiB per user)
      const previous = byUser.get(verified.user_id)
      const mine = previous === undefined ? [connection] : previous.concat([connection])
      byUser.set(verified.user_id, mine)
      while (mine.length > config.maxConnectionsPerUser) {
        const oldest = mine.shift()!
        oldest.output.close(CLOSE_REPLACED, "too many connections: replaced by a newer one", "replaced")
        // a dead socket would never finish the close handshake
        setTimeout(() => oldest.output.destroy("replaced"), CLOSE_GRACE_MS).unref()
      }
    }

    const refused = (socket: Duplex, status: number, code: string, reason: string, message: string) => {
      refuseUpgrade(socket, status, code, message)
      runFork(Effect.logInfo("handshake refused").pipe(
        Effect.annotateLogs({ status, reason, remote: socket instanceof Socket ? socket.remoteAddress ?? "" : "" })
      ))
    }

    const handshake = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      socket.on("error", destroyOnError)
      const url = targetOf(request.url)
      if (url === undefined) return refused(socket, 400, "BAD_REQUEST", "bad_target", "the request target is not a valid URL")
      if (url.pathname !== "/ws") return refused(socket, 404, "REFUSED", "not_found", "WebSocket endpoint is GET /ws")
      if (shuttingDown) return refused(socket, 503, "REFUSED", "shutting_down", "server is shutting down")
      const origin = request.headers.origin
      if (!isOriginAllowed(config, origin)) {
        return refused(socket, 403, "ORIGIN_NOT_ALLOWED", "origin_not_allowed", `Origin ${JSON.stringify(String(origin).slice(0, 200))} is not allowed (AGENTWIRE_ALLOWED_ORIGINS)`)
      }
      const token = WebSocketConnection.tokenOf(request, url)
      if (token === undefined) {
        return refused(socket, 401, "UNAUTHORIZED", "missing", new AuthError({ reason: "missing" }).message)
      }
      runFork(auth.verify(token).pipe(
        Effect.match({
          // a key set we cannot reach is our failure, not the client's: 503, so it retries
          onFailure: (error) =>
            error.reason === "jwks_unavailable"
              ? refused(socket, 503, "AUTH_UNAVAILABLE", error.reason, error.message)
              : refused(socket, 401, "UNAUTHORIZED", error.reason, error.message),
          onSuccess: (verified) => {
            if (socket.destroyed) return
            try {
              wss.handleUpgrade(request, socket, head, (ws) => accept(ws, verified, socket))
            } catch {
              socket.destroy()
            }
          }
        })
      ))
    }

    // a Node callback: client input must never throw out of it (an uncaught exception ends the process)
    const onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      try {
        handshake(request, socket, head)
      } catch {
        refuseUpgrade(socket, 400, "BAD_REQUEST", "the handshake could not be read")
      }
    }

    server = createServer(onRequest)
    const httpServer = server
    httpServer.on("upgrade", onUpgrade)

    const port = yield* Effect.acquireRelease(
      Effect.callback<number, ServerStartError>((resume) => {
        const onError = (error: NodeJS.ErrnoException) =>
          resume(Effect.fail(
            new ServerStartError({ reason: reasonOf(error.code), host: config.host, port: config.port, detail: error.message })
          ))
        httpServer.once("error", onError)
        httpServer.listen(config.port, config.host, () => {
          httpServer.off("error", onError)
          const address = httpServer.address()
          resume(Effect.succeed(typeof address === "object" && address !== null ? address.port : config.port))
        })
      }),
      () =>
        Effect.gen(function*() {
          // admission first: from here no run starts, so every run that did start is drained or stopped below.
          // The port stays open during the drain: load balancers see /ready 503, late starts get SHUTTING_DOWN.
          shuttingDown = true
          yield* engines.closeAdmission
          const active = yield* engines.activeRuns
          if (active > 0) {
            yield* Effect.logInfo("draining").pipe(Effect.annotateLogs({ active_runs: active, grace_ms: config.shutdownGraceMs }))
            const drained = yield* engines.drain(config.shutdownGraceMs)
            if (!drained) yield* Effect.logInfo("grace period over: stopping the remaining runs").pipe(Effect.annotateLogs({ active_runs: yield* engines.activeRuns }))
          }
          // an agent that ignores interruption must not hold the process: stop waiting after STOP_DEADLINE
          const stopped = yield* engines.interruptAll.pipe(Effect.timeoutOption(STOP_DEADLINE))
          if (Option.isNone(stopped)) {
            yield* Effect.logWarning("runs ignored their stop; shutting down without them").pipe(Effect.annotateLogs({ active_runs: yield* engines.activeRuns }))
          }
          if (connections.size > 0) {
            // a connection following a run gets its terminal events from the log, through its follower: they are sent first
            yield* Effect.forEach(connections, (connection) => connection.followersSettled(), { concurrency: "unbounded", discard: true }).pipe(
              Effect.timeoutOption(FOLLOWERS_DEADLINE)
            )
            for (const connection of connections) connection.output.close(1001, "server shutting down", "server_shutdown")
            yield* Deferred.await(allClosed).pipe(Effect.timeoutOption(CLOSE_GRACE))
            for (const connection of connections) connection.output.destroy("server_shutdown")
          }
          httpServer.close()
          httpServer.closeAllConnections()
          yield* Scope.close(httpScope, Exit.void)
        })
    )
    const host = config.host.includes(":") ? `[${config.host}]` : config.host
    yield* Effect.logInfo(`listening on http://${host}:${port} (WebSocket: ws://${host}:${port}/ws)`)
    return AgentwireServer.of({ host: config.host, port, url: `http://${host}:${port}` })
  })
)
