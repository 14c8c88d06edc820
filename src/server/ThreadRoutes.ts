/**
 * HTTP routes of the thread API (issue 14), all with a bearer token:
 *
 * - `GET /api/threads?before=&limit=`: 200 `{threads: [{thread_id, title,
 *   created_at, updated_at, last_status?}], next_before?}`, newest first
 *   (`limit` 1 to 100, default 20; `before` = `next_before` of the previous page).
 * - `GET /api/threads/{thread_id}`: 200 `{thread_id, title, created_at,
 *   updated_at, last_status?, messages, runs}`; 404 `THREAD_NOT_FOUND` for
 *   unknown threads and other users' threads alike.
 * - `DELETE /api/threads/{thread_id}`: 200 `{thread_id, deleted: true}`
 *   (its runs in flight are stopped first, and their retained run events are
 *   forgotten); 404 `THREAD_NOT_FOUND`.
 * - `DELETE /api/users/me/data`: erases everything of the caller (threads,
 *   messages, run summaries, retained run events; runs in flight are stopped):
 *   200 `{erased: {threads, messages, runs, events}}`.
 *
 * A deletion or an erase the server received is carried out even when the
 * client goes away before the answer (the routes are uninterruptible).
 *
 * Errors are `{error: {code, message}}`: 400 `INVALID_MESSAGE` (also for a
 * `{thread_id}` that is not an id, as on the WebSocket), 401
 * `UNAUTHORIZED`, 404 `THREAD_NOT_FOUND`, 503 `HISTORY_UNAVAILABLE` (the
 * database cannot answer now; a deletion that timed out stays queued and is
 * applied when it answers: retry to confirm) or `AUTH_UNAVAILABLE`.
 *
 * @module
 */
import { Effect, Layer, Option, Result, Schema } from "effect"
import { HttpRouter, type HttpServerRequest, HttpServerResponse } from "effect/http"
import { Auth, bearerToken } from "../services/Auth.ts"
import { Id } from "../protocol/Protocol.ts"
import { UNINTERRUPTIBLE } from "./HttpRoutes.ts"
import { makeApi, ThreadRequestError } from "./ThreadRequests.ts"
import * as UserQueryLimit from "./UserQueryLimit.ts"

const problem = (status: number, code: string, message: string) => HttpServerResponse.jsonUnsafe({ error: { code, message } }, { status })
const refused = (e: ThreadRequestError) => problem(e.status, e.code, e.message)
const isId = Schema.is(Id)

/** The `{thread_id}` of the path, checked like the WebSocket's ids (a malformed one is 400 `INVALID_MESSAGE`). */
const threadIdParam = Effect.gen(function*() {
  const thread_id = (yield* HttpRouter.params).thread_id ?? ""
  if (!isId(thread_id)) {
    return yield* new ThreadRequestError({
      code: "INVALID_MESSAGE",
      message: "thread_id must be 1 to 128 characters of A-Z a-z 0-9 . _ : - (and not a placeholder such as none)"
    })
  }
  return thread_id
})

/** Builds the routes layer; merge it into the server's router. */
export const make = Effect.gen(function*() {
  const auth = yield* Auth
  const api = yield* makeApi

  /** The caller, or the refusal to answer with. */
  const authenticate = (request: HttpServerRequest.HttpServerRequest) =>
    Effect.gen(function*() {
      const token = bearerToken(request.headers.authorization)
      if (token === undefined) return Result.fail(problem(401, "UNAUTHORIZED", "send Authorization: Bearer <jwt>"))
      const verified = yield* Effect.result(auth.verify(token))
      if (verified._tag === "Failure") {
        const { message, reason } = verified.failure
        yield* Effect.logInfo("request refused").pipe(Effect.annotateLogs({ reason }))
        return Result.fail(reason === "jwks_unavailable" ? problem(503, "AUTH_UNAVAILABLE", message) : problem(401, "UNAUTHORIZED", message))
      }
      return Result.succeed(verified.success.user_id)
    })

  // one user's queries in flight at once are bounded (they line up on the database the instances share)
  const perUser = UserQueryLimit.make()

  /** Runs `body` for the authenticated caller; a refusal becomes its error response. */
  const authed = (
    body: (user_id: string, request: HttpServerRequest.HttpServerRequest) => Effect.Effect<HttpServerResponse.HttpServerResponse, ThreadRequestError, HttpRouter.RouteContext>
  ) =>
  (request: HttpServerRequest.HttpServerRequest) =>
    Effect.gen(function*() {
      const who = yield* authenticate(request)
      if (who._tag === "Failure") return who.failure
      const answered = yield* perUser(who.success, body(who.success, request).pipe(Effect.catch((e) => Effect.succeed(refused(e)))))
      return Option.isNone(answered) ? UserQueryLimit.tooMany() : answered.value
    })

  const list = HttpRouter.add("GET", "/api/threads", authed((user_id, request) =>
    Effect.gen(function*() {
      const params = new URL(request.url, "http://localhost").searchParams
      const before = params.get("before") ?? undefined
      const limitText = params.get("limit")
      const limit = limitText === null ? undefined : /^\d{1,4}$/.test(limitText) ? Number(limitText) : Number.NaN
      const page = yield* api.list(user_id, { before, limit })
      return HttpServerResponse.jsonUnsafe(page)
    })))

  const get = HttpRouter.add("GET", "/api/threads/:thread_id", authed((user_id) =>
    Effect.gen(function*() {
      const thread_id = yield* threadIdParam
      return HttpServerResponse.jsonUnsafe(yield* api.get(user_id, thread_id))
    })))

  const remove = HttpRouter.add("DELETE", "/api/threads/:thread_id", authed((user_id) =>
    Effect.gen(function*() {
      const thread_id = yield* threadIdParam
      yield* api.remove(user_id, thread_id)
      return HttpServerResponse.jsonUnsafe({ thread_id, deleted: true })
    })), UNINTERRUPTIBLE)

  const erase = HttpRouter.add("DELETE", "/api/users/me/data", authed((user_id) =>
    Effect.map(api.erase(user_id), (erased) => HttpServerResponse.jsonUnsafe({ erased }))), UNINTERRUPTIBLE)

  return Layer.mergeAll(list, get, remove, erase)
})
