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
 * - A start or a stop the server received is carried out even when the client
 *   goes away before the answer (`UNINTERRUPTIBLE`).
 * - Start refusals by admission: 429 `RUN_LIMIT_EXCEEDED` / `RATE_LIMITED`,
 *   503 `SERVER_BUSY` / `SHUTTING_DOWN` (with `Retry-After`), 409
 *   `REQUEST_ID_CONFLICT`; a repeated `request_id` with the same payload
 *   answers 200 with the original run and starts nothing.
 * - `GET /api/runs?thread_id=&status=&limit=` with a bearer token: 200
 *   `{runs: [{run_id, thread_id, agent_name, status, started_at, ended_at?,
 *   last_seq}]}`, the user's active and retained runs, newest first (as
 *   `list_runs`); a bad parameter is 400 `INVALID_MESSAGE` naming it.
 * - `GET /api/runs/{run_id}`: 200 with that run's entry; 404 `RUN_NOT_FOUND`
 *   for unknown runs and other users' runs alike; 410 `RUN_EXPIRED` (with
 *   `last_seq`) for a run past retention.
 * - `GET /api/runs/{run_id}/events?after_seq=N`: 200 with a JSON array of the
 *   retained events with `seq > N` (at most `MAX_EVENTS_PER_PAGE`; `Link:
 *   rel="next"` when more are retained); with `Accept: text/event-stream`, an
 *   SSE stream that replays, then follows live until the run's last event
 *   (`Last-Event-ID` wins over `after_seq`; `: keepalive` every
 *   `sseHeartbeatMs` while idle; 204 when the run has ended and nothing is
 *   left after N; 429 `RATE_LIMITED` past `maxSseStreamsPerUser` streams).
 *   This endpoint also takes the token from `?token=` (browsers' `EventSource`
 *   cannot send headers). `after_seq` past the run's last event is 400
 *   `INVALID_MESSAGE` naming it.
 * - Any other method on these paths: 405 with `Allow`.
 *
 * Health and readiness are unauthenticated (probes); the run API is not.
 *
 * @module
 */
import { ByteSize, Effect, Exit, Layer, Option, Result, Stream } from "effect"
import { HttpIncomingMessage, HttpRouter, type HttpServerRequest, HttpServerResponse } from "effect/http"
import { decodeClientValue } from "../protocol/Protocol.ts"
import { Auth, bearerToken } from "../services/Auth.ts"
import { ExecutionEngineFactory } from "../services/ExecutionEngineFactory.ts"
import type { AdmissionError } from "../services/RunAdmission.ts"
import { AgentInstanceFactory } from "../services/AgentInstanceFactory.ts"
import { RunLog, type RunLogReadError, type RunSummary } from "../services/RunLog.ts"
import * as UserExecutionContext from "../services/UserExecutionContext.ts"
import * as RunEventsHttp from "./RunEventsHttp.ts"
import * as UserQueryLimit from "./UserQueryLimit.ts"

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
  /** An idle SSE stream gets a `: keepalive` comment this often, in milliseconds. */
  readonly sseHeartbeatMs: number
  /** Open SSE streams one user may hold; one more is refused with 429 `RATE_LIMITED`. */
  readonly maxSseStreamsPerUser: number
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
const notAllowed = (path: `/${string}`, ...allowed: ReadonlyArray<(typeof METHODS)[number]>) => {
  const allow = allowed.join(", ")
  const [first, ...rest] = METHODS.filter((m) => !allowed.includes(m)).map((method) =>
    HttpRouter.add(method, path, () =>
      Effect.succeed(HttpServerResponse.jsonUnsafe(
        { error: { code: "METHOD_NOT_ALLOWED", message: `${method} is not allowed on ${path}; use ${allowed.join(" or ")}` } },
        { status: 405, headers: { allow } }
      )))
  )
  return Layer.mergeAll(first!, ...rest)
}

const problem = (status: number, code: string, message: string, extra: Record<string, unknown> = {}) =>
  HttpServerResponse.jsonUnsafe({ error: { code, message, ...extra } }, { status })

/** A run's log entry as the API shows it (without the owner). */
const runInfo = ({ user_id: _, ...run }: RunSummary) => run

/** Answers about a user's own runs are private: never cached by a browser or a proxy. */
const PRIVATE = { "cache-control": "no-store" } as const

/** 404 for unknown and other users' runs alike; 410 with `last_seq` for runs past retention; 503 while the log's store is down. */
const runNotReadable = (error: RunLogReadError) =>
  error._tag === "RunExpiredError"
    ? problem(410, "RUN_EXPIRED", error.message, { run_id: error.run_id, last_seq: error.last_seq })
    : error._tag === "RunLogUnavailableError"
    ? problem(503, "LOG_UNAVAILABLE", error.message)
    : problem(404, "RUN_NOT_FOUND", `no run ${JSON.stringify(error.run_id.slice(0, 128))}`)

/** 503 `SERVER_BUSY` with `Retry-After`: a stop that cannot reach the run's instance now (never a false `[]` or 404). */
const stopUnavailable = (message: string, retry_after_ms: number) =>
  HttpServerResponse.jsonUnsafe(
    { error: { code: "SERVER_BUSY", message, retry_after_ms } },
    { status: 503, headers: { "retry-after": String(Math.max(1, Math.ceil(retry_after_ms / 1000))) } }
  )

/**
 * Route option of the routes that change state (`POST /api/runs`, `POST /api/runs/{run_id}/stop`): Effect's HTTP
 * server interrupts a handler when its client goes away (Node's `close` before the response ended), so a stop or a
 * start the server received would be dropped halfway; these handlers run to their end (each step is bounded: Redis
 * calls by their timeouts, a stop by the engine's), and only the answer is lost.
 */
export const UNINTERRUPTIBLE = { uninterruptible: true } as const

/** The request's query parameters (none when its target cannot be parsed). */
const searchParams = (request: HttpServerRequest.HttpServerRequest): URLSearchParams =>
  URL.parse(request.url, "http://localhost")?.searchParams ?? new URLSearchParams()

/** Builds the routes layer for `HttpRouter.toHttpEffect`. */
export const make = (options: RouteOptions) =>
  Effect.gen(function*() {
    const auth = yield* Auth
    const engines = yield* ExecutionEngineFactory
    const instances = yield* AgentInstanceFactory
    const log = yield* RunLog

    // open SSE streams, in all and per user (each released when its response ends, however it ends)
    let sseStreams = 0
    const sseByUser = new Map<string, number>()

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
            auth: { secret: options.secretSource },
            sse: { status: "up", required: false, streams: sseStreams }
          }
        }
        return HttpServerResponse.jsonUnsafe(body, { status: down.length === 0 && !shuttingDown ? 200 : 503 })
      })
    )

    /**
     * The request's user, or the refusal to answer with (logged, without the token).
     * With `query`, the token may also come from `?token=` (the header wins).
     */
    const authenticate = (request: HttpServerRequest.HttpServerRequest, query?: URLSearchParams) =>
      Effect.gen(function*() {
        const fromQuery = query?.get("token")
        const token = bearerToken(request.headers.authorization) ?? (fromQuery === null || fromQuery === "" ? undefined : fromQuery)
        if (token === undefined) {
          yield* Effect.logInfo("request refused").pipe(Effect.annotateLogs({ status: 401, reason: "missing" }))
          return Result.fail(problem(401, "UNAUTHORIZED", query === undefined ? "send Authorization: Bearer <jwt>" : "send Authorization: Bearer <jwt>, or ?token=<jwt>"))
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
        // the only part a client that goes away interrupts: a start whose body was received is carried out
        const read = yield* Effect.result(Effect.interruptible(
          request.arrayBuffer.pipe(Effect.provideService(HttpIncomingMessage.MaxBodySize, ByteSize.bytes(options.maxMessageBytes)))
        ))
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
      }), UNINTERRUPTIBLE)

    const stopRun = HttpRouter.add("POST", "/api/runs/:run_id/stop", (request) =>
      Effect.gen(function*() {
        const who = yield* authenticate(request)
        if (who._tag === "Failure") return who.failure
        const user_id = who.success
        const run_id = (yield* HttpRouter.params).run_id ?? ""
        // another user's run is indistinguishable from an unknown one; a run that ended on another
        // instance is known only to the shared log: the user's run, ended (expired counts as ended)
        const state = yield* Effect.flatMap(engines.runState(user_id, run_id), (here) =>
          here !== "unknown" ? Effect.succeed(here) : Effect.map(Effect.result(log.summary(user_id, run_id)), (logged) =>
            logged._tag === "Success" || logged.failure._tag === "RunExpiredError"
              ? "ended" as const
              // the shared log is unreachable: the run may execute on another instance
              : logged.failure._tag === "RunLogUnavailableError" ? "unreachable" as const : "unknown" as const))
        if (state === "unknown") return problem(404, "RUN_NOT_FOUND", `no run ${JSON.stringify(run_id.slice(0, 128))}`)
        if (state === "unreachable") return stopUnavailable("the run log (Redis) cannot be reached: whether and where the run executes is unknown now", 1000)
        const stopped = state === "active" ? yield* Effect.result(engines.stop({ user_id, run_id })) : Result.succeed([])
        if (Result.isFailure(stopped)) return stopUnavailable(stopped.failure.message, stopped.failure.retry_after_ms)
        return HttpServerResponse.jsonUnsafe({ run_ids: stopped.success })
      }), UNINTERRUPTIBLE)

    // one user's queries in flight at once are bounded (they line up on the store every instance shares)
    const perUser = UserQueryLimit.make()

    const listRuns = HttpRouter.add("GET", "/api/runs", (request) =>
      Effect.gen(function*() {
        const who = yield* authenticate(request)
        if (who._tag === "Failure") return who.failure
        const query = RunEventsHttp.parseListQuery(searchParams(request))
        if (query._tag === "Failure") return problem(400, "INVALID_MESSAGE", query.failure.message)
        const listed = yield* perUser(who.success, Effect.result(log.list(who.success, query.success)))
        if (Option.isNone(listed)) return UserQueryLimit.tooMany()
        if (listed.value._tag === "Failure") return runNotReadable(listed.value.failure)
        return HttpServerResponse.jsonUnsafe({ runs: listed.value.success.map(runInfo) }, { headers: PRIVATE })
      }))

    // the agents a start may name: what this server registered (e.g. `assistant` only when AGENTWIRE_LLM_* is set)
    const listAgents = HttpRouter.add("GET", "/api/agents", (request) =>
      Effect.gen(function*() {
        const who = yield* authenticate(request)
        if (who._tag === "Failure") return who.failure
        const default_agent = yield* Effect.orDie(instances.resolve(undefined))
        return HttpServerResponse.jsonUnsafe({ default_agent, agents: instances.agentNames.map((name) => ({ name })) }, { headers: PRIVATE })
      }))

    const getRun = HttpRouter.add("GET", "/api/runs/:run_id", (request) =>
      Effect.gen(function*() {
        const who = yield* authenticate(request)
        if (who._tag === "Failure") return who.failure
        const run_id = (yield* HttpRouter.params).run_id ?? ""
        // another user's run is indistinguishable from an unknown one
        const summary = yield* perUser(who.success, Effect.result(log.summary(who.success, run_id)))
        if (Option.isNone(summary)) return UserQueryLimit.tooMany()
        if (summary.value._tag === "Failure") return runNotReadable(summary.value.failure)
        return HttpServerResponse.jsonUnsafe(runInfo(summary.value.success), { headers: PRIVATE })
      }))

    const releaseStream = (user_id: string) =>
      Effect.sync(() => {
        sseStreams--
        const left = (sseByUser.get(user_id) ?? 1) - 1
        if (left <= 0) sseByUser.delete(user_id)
        else sseByUser.set(user_id, left)
      })

    const runEvents = HttpRouter.add("GET", "/api/runs/:run_id/events", (request) =>
      Effect.gen(function*() {
        const params = searchParams(request)
        const who = yield* authenticate(request, params)
        if (who._tag === "Failure") return who.failure
        const user_id = who.success
        const run_id = (yield* HttpRouter.params).run_id ?? ""
        const sse = RunEventsHttp.wantsEventStream(request.headers.accept)
        const from = RunEventsHttp.parseAfterSeq(params, sse ? request.headers["last-event-id"] : undefined)
        if (from._tag === "Failure") return problem(400, "INVALID_MESSAGE", from.failure.message)
        const { after_seq, name } = from.success
        // ownership first: another user's run is indistinguishable from an unknown one
        const looked = yield* perUser(user_id, Effect.result(log.summary(user_id, run_id)))
        if (Option.isNone(looked)) return UserQueryLimit.tooMany()
        const summary = looked.value
        if (summary._tag === "Failure") return runNotReadable(summary.failure)
        const { last_seq, status } = summary.success
        if (after_seq > last_seq) {
          return problem(400, "INVALID_MESSAGE", `invalid ${name}: ${after_seq} is beyond the run's last seq ${last_seq}`, { run_id, last_seq })
        }

        if (!sse) {
          const read = yield* perUser(user_id, Effect.result(log.read(user_id, run_id, after_seq, {
            maxEvents: RunEventsHttp.MAX_EVENTS_PER_PAGE,
            maxBytes: RunEventsHttp.MAX_BYTES_PER_PAGE
          })))
          if (Option.isNone(read)) return UserQueryLimit.tooMany()
          const page = read.value
          if (page._tag === "Failure") {
            const error = page.failure
            return error._tag === "AfterSeqError"
              ? problem(400, "INVALID_MESSAGE", `invalid after_seq: ${error.message}`, { run_id, last_seq: error.last_seq })
              : runNotReadable(error)
          }
          const { events, summary: now } = page.success
          const next = events.length > 0 ? events[events.length - 1]!.seq : after_seq
          const headers: Record<string, string> = {
            ...PRIVATE,
            "agentwire-last-seq": String(now.last_seq),
            "agentwire-run-status": now.status
          }
          // the page was cut: the rest is one more request away
          if (next < now.last_seq) headers.link = `</api/runs/${encodeURIComponent(run_id)}/events?after_seq=${next}>; rel="next"`
          return HttpServerResponse.text(RunEventsHttp.encodeJsonArray(events), { contentType: "application/json", headers })
        }

        // an ended run with nothing left: 204 tells EventSource not to reconnect
        if (status !== "running" && after_seq >= last_seq) return HttpServerResponse.empty({ status: 204, headers: PRIVATE })
        const open = sseByUser.get(user_id) ?? 0
        if (open >= options.maxSseStreamsPerUser) {
          yield* Effect.logInfo("event stream refused").pipe(Effect.annotateLogs({ user_id, reason: "too_many_streams", open }))
          return HttpServerResponse.jsonUnsafe(
            { error: { code: "RATE_LIMITED", message: `at most ${options.maxSseStreamsPerUser} event streams per user at once; close one first`, retry_after_ms: 1000 } },
            { status: 429, headers: { "retry-after": "1" } }
          )
        }
        // counted until the response ends: the request's scope closes after the body is written, or when the client leaves
        sseStreams++
        sseByUser.set(user_id, open + 1)
        const openedAt = Date.now()
        yield* Effect.addFinalizer((exit) =>
          Effect.andThen(
            releaseStream(user_id),
            Effect.logInfo("event stream closed").pipe(Effect.annotateLogs({
              user_id,
              run_id,
              after_seq,
              // interrupted: the client left (or the server shut down) before the run's end
              reason: Exit.isSuccess(exit) ? "run_ended" : Exit.hasInterrupts(exit) ? "client_gone" : "error",
              duration_ms: Date.now() - openedAt
            }))
          ))
        const encoder = new TextEncoder()
        const body = RunEventsHttp.eventStream(log, user_id, run_id, after_seq, options.sseHeartbeatMs).pipe(
          Stream.map((text) => encoder.encode(text))
        )
        return HttpServerResponse.stream(body, {
          contentType: "text/event-stream; charset=utf-8",
          headers: { "cache-control": "no-store", "x-accel-buffering": "no" }
        })
      }))

    return Layer.mergeAll(
      health,
      ready,
      startRun,
      stopRun,
      listRuns,
      listAgents,
      getRun,
      runEvents,
      notAllowed("/api/runs/:run_id/stop", "POST"),
      notAllowed("/api/runs/:run_id/events", "GET"),
      notAllowed("/api/runs/:run_id", "GET"),
      notAllowed("/health", "GET"),
      notAllowed("/ready", "GET"),
      notAllowed("/api/runs", "GET", "POST"),
      notAllowed("/api/agents", "GET"),
      notAllowed("/ws", "GET"),
      // the WebSocket endpoint asked without Upgrade: say how to use it
      HttpRouter.add("GET", "/ws", HttpServerResponse.jsonUnsafe(
        { error: { code: "UPGRADE_REQUIRED", message: "GET /ws is the WebSocket endpoint: open a WebSocket (Upgrade: websocket)" } },
        { status: 426, headers: { upgrade: "websocket", connection: "Upgrade" } }
      ))
    )
  })
