/**
 * The HTTP routes beside the WebSocket endpoint.
 *
 * - `GET /health`: 200 while the process serves.
 * - `GET /ready`: each component's status, measured when asked (see
 *   `Readiness`); 200 when every required component is up, else 503.
 * - `POST /api/runs {agent?, user_request, thread_id?}` with a bearer token and
 *   `Content-Type: application/json`: 202 `{run_id, thread_id, request_id}`; the
 *   run's events go to that user's sockets. Errors are `{error: {code, message}}`
 *   with 400, 401, 404, 413, 415 or 503 (`SHUTTING_DOWN`).
 * - `POST /api/runs/{run_id}/stop` with a bearer token: 200 `{run_ids}` (the
 *   run if it was stopped, `[]` if it had already ended); 404 `RUN_NOT_FOUND`
 *   for unknown runs and other users' runs alike.
 * - Start refusals by admission: 429 `RUN_LIMIT_EXCEEDED` / `RATE_LIMITED`,
 *   503 `SERVER_BUSY` / `SHUTTING_DOWN` (with `Retry-After`), 409
 *   `REQUEST_ID_CONFLICT`; a repeated `request_id` with the same payload
 *   answers 200 with the original run and starts nothing.
 * - Any other method on these paths: 405 with `Allow`.
 *
 * Health and readiness are unauthenticated (probes); the run API is not.
 *
 * @module
 */
import { ByteSize, Effect, Layer, Result } from "effect"
import { HttpIncomingMessage, HttpRouter, type HttpServerRequest, HttpServerResponse } from "effect/http"
import { decodeClientValue } from "../protocol/Protocol.ts"
import { Auth, bearerToken } from "../services/Auth.ts"
import { ExecutionEngineFactory } from "../services/ExecutionEngineFactory.ts"
import type { AdmissionError } from "../services/RunAdmission.ts"
import { AgentInstanceFactory } from "../services/AgentInstanceFactory.ts"
import * as UserExecutionContext from "../services/UserExecutionContext.ts"

/** One component of `/ready`: a status measured from a real signal, plus facts about it. */
export interface ComponentStatus {
  readonly status: "up" | "down"
  /** A required component that is down makes `/ready` answer 503. */
  readonly required: boolean
  readonly [fact: string]: unknown
}

/** What `/ready` reports, measured when asked. */
export interface Readiness {
  readonly shuttingDown: boolean
  readonly components: Readonly<Record<string, ComponentStatus>>
}

/** What the routes need to know about the server around them. */
export interface RouteOptions {
  readonly maxMessageBytes: number
  readonly secretSource: "configured" | "generated"
  readonly readiness: Effect.Effect<Readiness>
}

/** `application/json`, with no charset or `charset=utf-8` (the body is read as UTF-8). */
const isJson = (contentType: string | undefined): boolean => {
  const value = contentType?.trim() ?? ""
  if (!/^application\/json\s*(;|$)/i.test(value)) return false
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(value)?.[1]
  return charset === undefined || /^utf-?8$/i.test(charset)
}

const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "QUERY"] as const

/** 405 with `Allow` for every method `path` does not serve. */
const notAllowed = (path: `/${string}`, allow: (typeof METHODS)[number]) => {
  const [first, ...rest] = METHODS.filter((m) => m !== allow).map((method) =>
    HttpRouter.add(method, path, () =>
      Effect.succeed(HttpServerResponse.jsonUnsafe(
        { error: { code: "METHOD_NOT_ALLOWED", message: `${method} is not allowed on ${path}; use ${allow}` } },
        { status: 405, headers: { allow } }
      )))
  )
  return Layer.mergeAll(first!, ...rest)
}

const problem = (status: number, code: string, message: string) =>
  HttpServerResponse.jsonUnsafe({ error: { code, message } }, { status })

/** Builds the routes layer for `HttpRouter.toHttpEffect`. */
export const make = (options: RouteOptions) =>
  Effect.gen(function*() {
    const auth = yield* Auth
    const engines = yield* ExecutionEngineFactory
    const instances = yield* AgentInstanceFactory

    const health = HttpRouter.add("GET", "/health", HttpServerResponse.jsonUnsafe({ status: "ok" }))

    const ready = HttpRouter.add(
      "GET",
      "/ready",
      Effect.gen(function*() {
        const { components, shuttingDown } = yield* options.readiness
        const down = Object.entries(components).filter(([, c]) => c.required && c.status === "down").map(([name]) => name)
        const body = {
          status: shuttingDown ? "shutting_down" : down.length === 0 ? "ready" : "not_ready",
          ...(down.length === 0 ? {} : { down }),
          components: {
            ...components,
            agents: { names: instances.agentNames },
            auth: { secret: options.secretSource }
          }
        }
        return HttpServerResponse.jsonUnsafe(body, { status: down.length === 0 && !shuttingDown ? 200 : 503 })
      })
    )

    /** The request's user, or the refusal to answer with (logged, without the token). */
    const authenticate = (request: HttpServerRequest.HttpServerRequest) =>
      Effect.gen(function*() {
        const token = bearerToken(request.headers.authorization)
        if (token === undefined) {
          yield* Effect.logInfo("request refused").pipe(Effect.annotateLogs({ status: 401, reason: "missing" }))
          return Result.fail(problem(401, "UNAUTHORIZED", "send Authorization: Bearer <jwt>"))
        }
        const verified = yield* Effect.result(auth.verify(token))
        if (verified._tag === "Failure") {
          const { message, reason } = verified.failure
          // a key set we cannot reach is our failure, not the client's
          const status = reason === "jwks_unavailable" ? 503 : 401
          yield* Effect.logInfo("request refused").pipe(Effect.annotateLogs({ status, reason }))
          return Result.fail(problem(status, status === 503 ? "AUTH_UNAVAILABLE" : "UNAUTHORIZED", message))
        }
        return Result.succeed(verified.success.user_id)
      })

    const admissionProblem = (error: AdmissionError) =>
      HttpServerResponse.jsonUnsafe(
        { error: { code: error.code, message: error.message, ...(error.retry_after_ms === undefined ? {} : { retry_after_ms: error.retry_after_ms }) } },
        {
          status: error.status,
          headers: error.status === 409 || error.status === 404 ? {} : { "retry-after": String(Math.max(1, Math.ceil((error.retry_after_ms ?? 5000) / 1000))) }
        }
      )

    const startRun = HttpRouter.add("POST", "/api/runs", (request) =>
      Effect.gen(function*() {
        const who = yield* authenticate(request)
        if (who._tag === "Failure") return who.failure
        const user_id = who.success

        if (!isJson(request.headers["content-type"])) {
          return problem(415, "UNSUPPORTED_MEDIA_TYPE", "send the body as JSON with Content-Type: application/json")
        }
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
        const started = yield* Effect.result(engines.start(context.success, message.agent, message.user_request, {
          idempotent: message.request_id !== undefined,
          threadGiven: message.thread_id !== undefined,
          rateLimited: true
        }))
        if (started._tag === "Failure") {
          return started.failure._tag === "AdmissionError"
            ? admissionProblem(started.failure)
            : problem(404, "UNKNOWN_AGENT", started.failure.message)
        }
        const { duplicate, request_id, run_id, thread_id } = started.success
        // a repeated request_id answers with the run it started the first time, and starts nothing
        return HttpServerResponse.jsonUnsafe({ run_id, thread_id, request_id }, { status: duplicate ? 200 : 202 })
      }))

    const stopRun = HttpRouter.add("POST", "/api/runs/:run_id/stop", (request) =>
      Effect.gen(function*() {
        const who = yield* authenticate(request)
        if (who._tag === "Failure") return who.failure
        const user_id = who.success
        const run_id = (yield* HttpRouter.params).run_id ?? ""
        // another user's run is indistinguishable from an unknown one
        const state = yield* engines.runState(user_id, run_id)
        if (state === "unknown") return problem(404, "RUN_NOT_FOUND", `no run ${JSON.stringify(run_id.slice(0, 128))}`)
        const run_ids = state === "active" ? yield* engines.stop({ user_id, run_id }) : []
        return HttpServerResponse.jsonUnsafe({ run_ids })
      }))

    return Layer.mergeAll(
      health,
      ready,
      startRun,
      stopRun,
      notAllowed("/api/runs/:run_id/stop", "POST"),
      notAllowed("/health", "GET"),
      notAllowed("/ready", "GET"),
      notAllowed("/api/runs", "POST"),
      notAllowed("/ws", "GET"),
      // the WebSocket endpoint asked without Upgrade: say how to use it
      HttpRouter.add("GET", "/ws", HttpServerResponse.jsonUnsafe(
        { error: { code: "UPGRADE_REQUIRED", message: "GET /ws is the WebSocket endpoint: open a WebSocket (Upgrade: websocket)" } },
        { status: 426, headers: { upgrade: "websocket", connection: "Upgrade" } }
      ))
    )
  })
