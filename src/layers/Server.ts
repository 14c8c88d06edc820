/**
 * The server: one Node `http.Server` carrying the HTTP routes (through Effect's
 * router) and `GET /ws` (through `ws` directly: the fan-out hot path stays a
 * plain `ws.send` of a frame encoded once by the bridge).
 *
 * The handshake is authenticated before any socket is accepted: a missing or
 * bad token gets `401` on the raw connection. Frames over
 * `maxMessageBytes` close the connection with 1009 (`ws`'s `maxPayload`).
 *
 * Every `heartbeatIntervalMs` each socket is pinged; one that has not answered
 * the previous ping is terminated (its close is logged like any other).
 *
 * Startup failures are typed (`ServerStartError`). Shutdown, when the layer's
 * scope closes: `/ready` turns 503, listening stops, runs in flight are
 * interrupted (each still sends its terminal events), then sockets are closed
 * with 1001 and, after a second, terminated.
 *
 * @module
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Deferred, Effect, FiberSet, Layer, Option, Schedule, Scope } from "effect"
import { HttpRouter } from "effect/http"
import { createServer, type IncomingMessage, STATUS_CODES } from "node:http"
import type { Duplex } from "node:stream"
import { type WebSocket, WebSocketServer } from "ws"
import { AgentInstanceFactory } from "../services/AgentInstanceFactory.ts"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import { AgentwireServer, ServerStartError } from "../services/AgentwireServer.ts"
import { Auth, AuthError } from "../services/Auth.ts"
import { ExecutionEngineFactory } from "../services/ExecutionEngineFactory.ts"
import { WebSocketBridge } from "../services/WebSocketBridge.ts"
import * as HttpRoutes from "./HttpRoutes.ts"
import * as WebSocketConnection from "./WebSocketConnection.ts"

/** Sockets pinged per slice of a heartbeat sweep. */
const HEARTBEAT_SLICE = 256

/** How long closing sockets get to finish the close handshake at shutdown. */
const CLOSE_GRACE = "1 second"

const reasonOf = (code: string | undefined): ServerStartError["reason"] =>
  code === "EADDRINUSE"
    ? "AddressInUse"
    : code === "EACCES"
    ? "PermissionDenied"
    : code === "EADDRNOTAVAIL" || code === "ENOTFOUND"
    ? "AddressNotAvailable"
    : "Unknown"

/** Answers a refused handshake on the raw connection and closes it. */
const refuseUpgrade = (socket: Duplex, status: number, message: string) => {
  if (socket.destroyed) return
  const body = JSON.stringify({ error: { code: status === 401 ? "UNAUTHORIZED" : "REFUSED", message } })
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}\r\n` +
      "Connection: close\r\nContent-Type: application/json\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
  )
}

/** Listens on the configured host and port; requires the agent runtime, auth and config. */
export const layer: Layer.Layer<
  AgentwireServer,
  ServerStartError,
  AgentwireConfig | Auth | ExecutionEngineFactory | AgentInstanceFactory | WebSocketBridge
> = Layer.effect(
  AgentwireServer,
  Effect.gen(function*() {
    const config = yield* AgentwireConfig
    const auth = yield* Auth
    const engines = yield* ExecutionEngineFactory
    const scope = yield* Scope.Scope
    // every connection and handshake fiber lives here; all are interrupted at shutdown
    const runFork = yield* FiberSet.makeRuntime<WebSocketBridge | ExecutionEngineFactory>()
    let shuttingDown = false

    const routes = yield* HttpRoutes.make({
      maxMessageBytes: config.maxMessageBytes,
      secretSource: Option.isSome(config.jwtSecret) ? "configured" : "generated",
      isShuttingDown: () => shuttingDown
    })
    const httpEffect = yield* HttpRouter.toHttpEffect(routes)
    const onRequest = yield* NodeHttpServer.makeHandler(httpEffect, { scope })

    const sockets = new Set<WebSocket>()
    const allClosed = yield* Deferred.make<void>()
    const wss = new WebSocketServer({
      noServer: true,
      maxPayload: config.maxMessageBytes,
      perMessageDeflate: false,
      clientTracking: false,
      handleProtocols: WebSocketConnection.selectProtocol
    })

    // sockets that answered (or were accepted) since the last heartbeat
    const answered = new WeakSet<WebSocket>()
    // in slices, yielding between them: one sweep over many sockets must not stall every other connection
    const heartbeat = Effect.gen(function*() {
      let n = 0
      for (const ws of Array.from(sockets)) {
        if (!answered.has(ws)) {
          ws.terminate()
        } else {
          answered.delete(ws)
          ws.ping()
        }
        if (++n % HEARTBEAT_SLICE === 0) yield* Effect.yieldNow
      }
    })
    if (config.heartbeatIntervalMs > 0) {
      yield* Effect.forkScoped(Effect.repeat(heartbeat, Schedule.spaced(config.heartbeatIntervalMs)))
    }

    const accept = (ws: WebSocket, user_id: string, socket: Duplex) => {
      sockets.add(ws)
      answered.add(ws)
      ws.on("pong", () => answered.add(ws))
      ws.once("close", () => {
        sockets.delete(ws)
        if (shuttingDown && sockets.size === 0) Deferred.doneUnsafe(allClosed, Effect.void)
      })
      runFork(WebSocketConnection.run(ws, user_id, { maxMessageBytes: config.maxMessageBytes, socket }))
    }

    const onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      socket.on("error", () => socket.destroy())
      const url = new URL(request.url ?? "/", "http://localhost")
      if (url.pathname !== "/ws") return refuseUpgrade(socket, 404, "WebSocket endpoint is GET /ws")
      if (shuttingDown) return refuseUpgrade(socket, 503, "server is shutting down")
      const token = WebSocketConnection.tokenOf(request, url)
      if (token === undefined) {
        return refuseUpgrade(socket, 401, new AuthError({ reason: "missing" }).message)
      }
      runFork(auth.verify(token).pipe(Effect.map((verified) => verified.user_id),
        Effect.match({
          onFailure: (error) => refuseUpgrade(socket, 401, error.message),
          onSuccess: (user_id) => {
            if (socket.destroyed) return
            wss.handleUpgrade(request, socket, head, (ws) => accept(ws, user_id, socket))
          }
        })
      ))
    }

    const server = createServer(onRequest)
    server.on("upgrade", onUpgrade)

    const port = yield* Effect.acquireRelease(
      Effect.callback<number, ServerStartError>((resume) => {
        const onError = (error: NodeJS.ErrnoException) =>
          resume(Effect.fail(
            new ServerStartError({ reason: reasonOf(error.code), host: config.host, port: config.port, detail: error.message })
          ))
        server.once("error", onError)
        server.listen(config.port, config.host, () => {
          server.off("error", onError)
          const address = server.address()
          resume(Effect.succeed(typeof address === "object" && address !== null ? address.port : config.port))
        })
      }),
      () =>
        Effect.gen(function*() {
          shuttingDown = true
          server.close()
          yield* engines.interruptAll
          if (sockets.size > 0) {
            for (const ws of sockets) ws.close(1001, "server shutting down")
            yield* Deferred.await(allClosed).pipe(Effect.timeoutOption(CLOSE_GRACE))
            for (const ws of sockets) ws.terminate()
          }
          server.closeAllConnections()
        })
    )

    const host = config.host.includes(":") ? `[${config.host}]` : config.host
    yield* Effect.logInfo(`listening on http://${host}:${port} (WebSocket: ws://${host}:${port}/ws)`)
    return AgentwireServer.of({ host: config.host, port, url: `http://${host}:${port}` })
  })
)
