/**
 * At most `MAX_QUERIES_PER_USER` HTTP queries of one user in flight at once
 * (the run queries `GET /api/runs…` and the thread routes): a client that
 * sends hundreds at once cannot line them all up on the store the instances
 * share (a Redis script or a database query each), where every other user's
 * commands, and the instances' leases, would wait behind them. Past the bound
 * a query is answered at once with 429 `RATE_LIMITED` (`retry_after_ms`, and
 * `Retry-After`). A WebSocket connection handles its frames one at a time, so
 * it needs no such bound. Per instance.
 *
 * @module
 */
import { Effect, Option } from "effect"
import { HttpServerResponse } from "effect/http"

/** Queries of one user in flight at once, per instance. */
export const MAX_QUERIES_PER_USER = 8

/** The refusal past the bound: 429 `RATE_LIMITED`, retry after 1 s. */
export const tooMany = (): HttpServerResponse.HttpServerResponse =>
  HttpServerResponse.jsonUnsafe(
    {
      error: {
        code: "RATE_LIMITED",
        message: `at most ${MAX_QUERIES_PER_USER} queries of one user at a time; retry when one has been answered`,
        retry_after_ms: 1000
      }
    },
    { status: 429, headers: { "retry-after": "1" } }
  )

/**
 * A limiter: `guard(user_id, query)` runs `query` when the user has fewer
 * than `max` in flight (`Some` of its result), else does not run it (`None`:
 * answer `tooMany()`).
 */
export const make = (max: number = MAX_QUERIES_PER_USER) => {
  const inFlight = new Map<string, number>()
  return <A, E, R>(user_id: string, query: Effect.Effect<A, E, R>): Effect.Effect<Option.Option<A>, E, R> =>
    Effect.suspend(() => {
      const n = inFlight.get(user_id) ?? 0
      if (n >= max) return Effect.succeedNone
      inFlight.set(user_id, n + 1)
      return Effect.ensuring(
        Effect.asSome(query),
        Effect.sync(() => {
          const left = (inFlight.get(user_id) ?? 1) - 1
          if (left > 0) inFlight.set(user_id, left)
          else inFlight.delete(user_id)
        })
      )
    })
}
