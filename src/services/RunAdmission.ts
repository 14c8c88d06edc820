/**
 * RunAdmission: who may start a run, now.
 *
 * In front of `ExecutionEngineFactory.start`: admission open (closed at
 * shutdown), concurrent runs per user and per process, idempotent starts
 * (a `request_id` seen within the window starts nothing new), and the per-user
 * start rate (a token bucket the transports consult before starting). Every
 * refusal is immediate and typed (`AdmissionError`), never queued.
 *
 * Implemented in memory by `layers/RunAdmissionMemory.ts` (per process); the
 * contract holds no in-process assumption, so a shared (Redis) implementation
 * can make the limits cluster-wide.
 *
 * @module
 */
import { Context, Data, type Effect } from "effect"
import type { UserExecutionContext } from "./UserExecutionContext.ts"

/** The limits, with their environment variables (see `layers/AgentwireConfig.ts`). */
export interface RunLimits {
  /** Concurrent runs per user (`AGENTWIRE_MAX_RUNS_PER_USER`). */
  readonly maxRunsPerUser: number
  /** Concurrent runs per process (`AGENTWIRE_MAX_RUNS`). */
  readonly maxRuns: number
  /** Sustained run starts per user per second (`AGENTWIRE_RUN_STARTS_PER_SECOND`); 0 = unlimited. */
  readonly runStartsPerSecond: number
  /** Starts a user may make at once before the rate applies (`AGENTWIRE_RUN_START_BURST`). */
  readonly runStartBurst: number
  /** How long a client `request_id` is remembered, in ms (`AGENTWIRE_IDEMPOTENCY_WINDOW_MS`). */
  readonly idempotencyWindowMs: number
}

/** Why a start was refused; `code` is the wire error code. */
export class AdmissionError extends Data.TaggedError("AdmissionError")<{
  /** `thread_not_found`: the start named a thread id that another user has (indistinguishable from an unknown thread to the client). */
  readonly reason: "shutting_down" | "run_limit" | "server_busy" | "rate_limited" | "request_id_conflict" | "thread_not_found"
  /** The limit that was hit (runs), when there is one. */
  readonly limit?: number | undefined
  /** For `rate_limited` and `server_busy`: when to retry, in ms. */
  readonly retry_after_ms?: number | undefined
}> {
  /** The protocol error code (`error.code` on the socket, `error.code` over HTTP). */
  get code(): "SHUTTING_DOWN" | "RUN_LIMIT_EXCEEDED" | "SERVER_BUSY" | "RATE_LIMITED" | "REQUEST_ID_CONFLICT" | "THREAD_NOT_FOUND" {
    switch (this.reason) {
      case "shutting_down":
        return "SHUTTING_DOWN"
      case "run_limit":
        return "RUN_LIMIT_EXCEEDED"
      case "server_busy":
        return "SERVER_BUSY"
      case "rate_limited":
        return "RATE_LIMITED"
      case "request_id_conflict":
        return "REQUEST_ID_CONFLICT"
      case "thread_not_found":
        return "THREAD_NOT_FOUND"
    }
  }
  /** The HTTP status of the refusal. */
  get status(): 404 | 409 | 429 | 503 {
    return this.reason === "thread_not_found" ? 404 : this.reason === "request_id_conflict" ? 409 : this.reason === "run_limit" || this.reason === "rate_limited" ? 429 : 503
  }
  override get message(): string {
    switch (this.reason) {
      case "shutting_down":
        return "the server is shutting down and accepts no new runs; retry on another instance or after it restarts"
      case "run_limit":
        return `you already have ${this.limit} runs in flight (the limit); stop one or wait for one to end`
      case "server_busy":
        return this.limit === undefined
          ? "the server cannot admit runs right now (its shared state is unreachable); retry shortly"
          : `the server is running its maximum of ${this.limit} runs; retry shortly`
      case "rate_limited":
        return `too many run starts; retry in ${this.retry_after_ms} ms`
      case "request_id_conflict":
        return "this request_id was already used for a different request; use a fresh request_id per request"
      case "thread_not_found":
        return "no such thread: start without thread_id for a new thread, or name one of your own threads"
    }
  }
}

/** The run a repeated `request_id` refers to. */
export interface AdmittedRun {
  readonly run_id: string
  readonly thread_id: string
  readonly request_id: string
  readonly agent_name: string
}

/** How `admit` treats one start. */
export interface AdmitOptions {
  /** The client chose the `request_id`: `fingerprint` identifies the payload (agent, request); `threadGiven`: the client named the thread. */
  readonly idempotency?: { readonly fingerprint: string; readonly threadGiven: boolean } | undefined
  /** Spend one start from the user's budget (client-initiated starts). */
  readonly rateLimited?: boolean | undefined
}

/**
 * The result of `admit`: a slot to release when the run ends, or the run a duplicate refers to.
 * `release` gives the slot back the first time it runs (also when that first run is interrupted:
 * the slot is then freed later, or expires); running it again does nothing.
 */
export type Admission =
  | { readonly _tag: "Admitted"; readonly release: Effect.Effect<void> }
  | { readonly _tag: "Duplicate"; readonly run: AdmittedRun }

export class RunAdmission extends Context.Service<RunAdmission, {
  readonly limits: RunLimits
  /**
   * Admits the run `context` of `agent_name`, or refuses it, checking in this
   * order: admission open, a repeated `request_id` (with `options.idempotency`:
   * the client chose it), the user's and the process's concurrent runs, then
   * (with `options.rateLimited`) the user's start budget. A repeat of a
   * `request_id` within the window is a `Duplicate` (nothing is admitted and no
   * budget is spent) when its fingerprint matches and, if the repeat names a
   * thread, that thread is the original run's; otherwise `request_id_conflict`.
   * A refused start spends no budget.
   */
  readonly admit: (
    context: UserExecutionContext,
    agent_name: string,
    options?: AdmitOptions
  ) => Effect.Effect<Admission, AdmissionError>
  /** Closes admission: every later `admit` fails with `shutting_down`. Idempotent. */
  readonly close: Effect.Effect<void>
  readonly isOpen: Effect.Effect<boolean>
  /** Runs holding a slot: of one user, or of everyone. */
  readonly activeRuns: (user_id?: string) => Effect.Effect<number>
  /**
   * Forgets what admission remembers of a user (their `request_id`s and start
   * budget), for an erase of their data; their runs in flight keep their slots.
   * Optional: a shared store may not offer it.
   */
  readonly forgetUser?: ((user_id: string) => Effect.Effect<void>) | undefined
}>()("agentwire/RunAdmission") {}
