/**
 * The HTTP routes beside the WebSocket endpoint.
 *
 * - `GET /health`: 200 while the process serves.
 * - `GET /ready`: 200 with each component's status once startup finished; 503
 *   while shutting down.
 * - `POST /api/runs {agent?, user_request, thread_id?}` with a bearer token:
 *   202 `{run_id, thread_id, request_id}`; the run's events go to that user's
 *   sockets. Errors are `{error: {code, message}}` with 400, 401, 404 or 413.
 *
 * Health and readiness are unauthenticated (probes); the run API is not.
 *
 * @module
 */
import { ByteSize, Effect, Layer } from "effect"
import { HttpIncomingMessage, HttpRouter, HttpServerResponse } from "effect/http"
import { decodeClientValue } from "../protocol/Protocol.ts"
import { Auth, bearerToken } from "../services/Auth.ts"
import { ExecutionEngineFactory } from "../services/ExecutionEngineFactory.ts"
import { AgentInstanceFactory } from "../services/AgentInstanceFactory.ts"
import * as UserExecutionContext from "../services/UserExecutionContext.ts"
import { WebSocketBridge } from "../services/WebSocketBridge.ts"

/** What the routes need to know about the server around them. */
export interface RouteOptions {
  readonly maxMessageBytes: number
  readonly secretSource: "configured" | "generated"
  readonly isShuttingDown: () => boolean
}

const problem = (status: number, code: string, message: string) =>
  HttpServerResponse.jsonUnsafe({ error: { code, message } }, { status })

/** Builds the routes layer for `HttpRouter.toHttpEffect`. */
export const make = (options: RouteOptions) =>
  Effect.gen(function*() {
    const auth = yield* Auth
    const engines = yield* ExecutionEngineFactory
    const instances = yield* AgentInstanceFactory
    const bridge = yield* WebSocketBridge

    const health = HttpRouter.add("GET", "/health", HttpServerResponse.jsonUnsafe({ status: "ok" }))

    const ready = HttpRouter.add(
      "GET",
      "/ready",
      Effect.gen(function*() {
        const shuttingDown = options.isShuttingDown()
        const body = {
          status: shuttingDown ? "shutting_down" : "ready",
          components: {
            http: { status: shuttingDown ? "closing" : "up" },
            bridge: { status: "up", connections: yield* bridge.connectionCount() },
            engine: { status: "up", active_runs: yield* engines.activeRuns },
            agents: { status: "up", names: instances.agentNames },
            auth: { status: "up", secret: options.secretSource }
          }
        }
        return HttpServerResponse.jsonUnsafe(body, { status: shuttingDown ? 503 : 200 })
      })
    )

    const startRun = HttpRouter.add("POST", "/api/runs", (request) =>
      Effect.gen(function*() {
        const token = bearerToken(request.headers.authorization)
        if (token === undefined) return problem(401, "UNAUTHORIZED", "send Authorization: Bearer <jwt>")
        const verified = yield* Effect.result(auth.verify(token))
        if (verified._tag === "Failure") return problem(401, "UNAUTHORIZED", verified.failure.message)
        const user_id = verified.success.user_id

        const length = Number(request.headers["content-length"] ?? "0")
        if (length > options.maxMessageBytes) {
          return problem(413, "PAYLOAD_TOO_LARGE", `body is larger than ${options.maxMessageBytes} bytes`)
        }
        // counted in bytes while reading, so a chunked body cannot exceed the limit either
        const read = yield* Effect.result(
          request.arrayBuffer.pipe(Effect.provideService(HttpIncomingMessage.MaxBodySize, ByteSize.bytes(options.maxMessageBytes)))
        )
        if (read._tag === "Failure") {
          return problem(413, "PAYLOAD_TOO_LARGE", `body is larger than ${options.maxMessageBytes} bytes`)
        }
        let body: unknown
        try {
          body = JSON.parse(new TextDecoder().decode(read.success))
        } catch {
          return problem(400, "INVALID_JSON", "body is not valid JSON")
        }
        if (typeof body !== "object" || body === null || Array.isArray(body)) {
          return problem(400, "INVALID_MESSAGE", "body must be a JSON object with user_request")
        }
        const message = decodeClientValue({ ...body, type: "start_agent" })
        if (message.type === "error") return problem(400, message.code, message.message.replace("invalid start_agent: ", ""))
        if (message.type !== "start_agent") return problem(400, "INVALID_MESSAGE", "body must describe a run")

        const context = yield* Effect.result(UserExecutionContext.make({ user_id, thread_id: message.thread_id, request_id: message.request_id }))
        if (context._tag === "Failure") return problem(400, "INVALID_MESSAGE", context.failure.message)
        const started = yield* Effect.result(engines.start(context.success, message.agent, message.user_request))
        if (started._tag === "Failure") return problem(404, "UNKNOWN_AGENT", started.failure.message)
        const { request_id, run_id, thread_id } = started.success
        return HttpServerResponse.jsonUnsafe({ run_id, thread_id, request_id }, { status: 202 })
      }))

    return Layer.mergeAll(health, ready, startRun)
  })
