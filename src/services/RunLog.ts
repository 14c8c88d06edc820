/**
 * RunLog: every event of a run, kept for a while, so that a client that lost
 * its connection can get what it missed.
 *
 * Each event is appended to its run's log *before* it is delivered, and its
 * `seq` is its position in that log (1, 2, 3…). A run's log lives while the run
 * is active and `retentionMs` after its terminal event; then it leaves a small
 * tombstone (`tombstoneMs`), so that a late client is told `RUN_EXPIRED` rather
 * than `RUN_NOT_FOUND`. A global byte budget evicts the oldest finished runs
 * first. `epoch` names the log's lifetime: a client that sees another epoch
 * knows that what it did not receive is gone.
 *
 * The contract is what a shared store can offer too (appends, range reads from a
 * seq, waiting for an append after a seq, run summaries, expiry); nothing in it
 * assumes one process. `follow` below builds the live subscription from `read`
 * and `waitFor`. Every read takes the asking user: another user's run is
 * indistinguishable from an unknown one.
 *
 * Implementations: `layers/RunLogMemory.ts` (one process), `layers/RunLogRedis.ts`
 * (shared by every instance on one Redis).
 *
 * @module
 */
import { Context, Data, Effect, Option, Stream } from "effect"
import type { AgentEvent } from "../protocol/Protocol.ts"

/** A run's status in the log: `running` while active, else its root `agent_completed.status`. */
export type RunStatus = "running" | "completed" | "failed" | "cancelled" | "timed_out"

/** What the log knows of one run (the `runs` list entry of the protocol). */
export interface RunSummary {
  readonly run_id: string
  readonly thread_id: string
  readonly user_id: string
  /** The root agent's name (from the run's first depth-0 event). */
  readonly agent_name: string
  readonly status: RunStatus
  /** ISO 8601, the timestamp of the run's first event. */
  readonly started_at: string
  /** ISO 8601, the timestamp of the root `agent_completed`; absent while running. */
  readonly ended_at?: string
  /** The `seq` of the last event logged (0 before the first). */
  readonly last_seq: number
}

/** One logged event: its position, its type, and the frame sent for it (the event as JSON text). */
export interface LoggedEvent {
  readonly seq: number
  readonly type: AgentEvent["type"]
  readonly frame: string
}

/**
 * What an append tells the run's emitter:
 * - `ok`: logged;
 * - `event_limit` / `log_full`: logged, but the run must end now (it reached
 *   `maxEventsPerRun`, less a reserve kept for its terminal events; or the byte
 *   budget is spent by active runs alone);
 * - `refused`: not logged (the hard cap is reached): the event must not be delivered;
 * - `log_unavailable`: not logged (the log's store is unreachable and the
 *   events waiting for it fill their buffer, or the store refuses the run's
 *   events for good): the event is delivered, and the run must end now
 *   (`LOG_UNAVAILABLE`); its log is lost (`RUN_EXPIRED`);
 * - `fenced`: not logged, and not to be delivered: another instance took the
 *   run over and ended it (`INSTANCE_LOST`: this instance's lease had
 *   expired, a shared log only); the run must stop here at once, its later
 *   events are answered `fenced` too.
 */
export type AppendResult = "ok" | "event_limit" | "log_full" | "refused" | "log_unavailable" | "fenced"

/** A page of a run's log: events with `seq > after_seq`, in order, and the run as it was when read. */
export interface LogPage {
  readonly events: ReadonlyArray<LoggedEvent>
  readonly summary: RunSummary
}

/** Retention settings (`AGENTWIRE_RETENTION_MS`, `AGENTWIRE_MAX_EVENTS_PER_RUN`, `AGENTWIRE_RETENTION_BYTES`, `AGENTWIRE_RETENTION_BYTES_PER_USER`, `AGENTWIRE_TOMBSTONE_MS`). */
export interface RunLogSettings {
  /** How long a finished run's events stay, in milliseconds. */
  readonly retentionMs: number
  /** Events one run may log; past it (less a reserve for its terminal events) the run fails with `EVENT_LIMIT`. */
  readonly maxEventsPerRun: number
  /** Bytes of event frames all logs together may hold; the oldest finished runs are evicted first. */
  readonly maxBytes: number
  /**
   * Bytes one user's runs may hold: past it that user's own oldest finished
   * runs are evicted first, and a run of theirs that would still exceed it
   * fails with `LOG_FULL`; other users' runs are untouched. No eviction takes
   * the run whose append it is: a run that ended over the share stays until
   * another run's events need the room.
   */
  readonly maxBytesPerUser: number
  /** How long an evicted or expired run is remembered as expired, in milliseconds. */
  readonly tombstoneMs: number
}

/** No such run for this user (unknown, or another user's). */
export class RunNotFoundError extends Data.TaggedError("RunNotFoundError")<{ readonly run_id: string }> {
  override get message(): string {
    return `no run ${JSON.stringify(this.run_id)}`
  }
}

/** The run's events are gone (past retention, or evicted); `last_seq` is how far its log went. */
export class RunExpiredError extends Data.TaggedError("RunExpiredError")<{ readonly run_id: string; readonly last_seq: number }> {
  override get message(): string {
    return `run ${JSON.stringify(this.run_id)} expired: its events (up to seq ${this.last_seq}) are no longer retained`
  }
}

/** `after_seq` is past the run's last event. */
export class AfterSeqError extends Data.TaggedError("AfterSeqError")<{ readonly after_seq: number; readonly last_seq: number }> {
  override get message(): string {
    return `after_seq ${this.after_seq} is beyond the run's last seq ${this.last_seq}`
  }
}

/**
 * The log's store cannot be reached right now (a shared log during an outage):
 * try again later. Transports answer 503 / an error frame `LOG_UNAVAILABLE`.
 */
export class RunLogUnavailableError extends Data.TaggedError("RunLogUnavailableError")<{ readonly reason: string }> {
  override get message(): string {
    return `the run log is unavailable: ${this.reason}`
  }
}

/** Why a run's log cannot be read. */
export type RunLogReadError = RunNotFoundError | RunExpiredError | RunLogUnavailableError

/** Filters of `list`. */
export interface ListOptions {
  readonly thread_id?: string | undefined
  readonly status?: RunStatus | undefined
  /** At most this many (the log caps it at `MAX_LIST_RUNS`). */
  readonly limit?: number | undefined
}

/** What the log holds now (for `/ready` and metrics). */
export interface RunLogStats {
  /** Runs retained, active ones included. */
  readonly runs: number
  readonly activeRuns: number
  /** Bytes counted against `maxBytes`. */
  readonly bytes: number
  readonly maxBytes: number
  readonly tombstones: number
  /** Finished runs evicted by the byte budget since start. */
  readonly evicted: number
  /**
   * For a log kept in another process (Redis): whether it is reachable now
   * (`/ready` reports `redis: down` when not), and how many events wait in
   * this instance's buffer for it. Absent for the in-memory log.
   */
  readonly store?: { readonly up: boolean; readonly bufferedEvents: number } | undefined
}

/**
 * Events a log keeps past its soft cap so that a run stopped there can still
 * log its terminal events: a quarter of `maxEventsPerRun`, at most 1024. A run
 * is told `event_limit` once it passes `maxEventsPerRun - terminalReserve(…)`.
 */
export const terminalReserve = (maxEventsPerRun: number): number => Math.min(1024, Math.floor(maxEventsPerRun / 4))

/** Most runs one `list` returns. */
export const MAX_LIST_RUNS = 100

/**
 * Most of a user's runs one `list` looks at, newest first: a filter (`thread_id`,
 * `status`) matching only older runs answers fewer (or none), so that one call's
 * work stays bounded however many runs the user has retained (on Redis, one
 * script that no other instance's command waits behind for long).
 */
export const MAX_LIST_SCAN = 500

export class RunLog extends Context.Service<RunLog, {
  /**
   * The id of this log's lifetime: a client that reconnects and sees another one lost what it had not received.
   * Read it each time it is needed: a shared log's epoch changes when its store comes back without its data.
   */
  readonly epoch: string
  readonly settings: RunLogSettings
  /** Appends one stamped event (its `frame` is the event as JSON text). Appends of one run come in `seq` order. */
  readonly append: (event: AgentEvent, frame: string) => Effect.Effect<AppendResult>
  /** The same append as a synchronous call, for logs that hold their data in process; absent otherwise. */
  readonly appendSync?: ((event: AgentEvent, frame: string) => AppendResult) | undefined
  /** The run's emitter is gone: a run that never logged its terminal event is closed as `cancelled`. */
  readonly release: (run_id: string) => Effect.Effect<void>
  /**
   * Forgets every ended run of the user, with its events and tombstone
   * (data-protection erasure): they answer `RunNotFoundError` afterwards, not
   * `RunExpiredError`; runs still running keep their logs. Returns the number
   * of runs erased. Fails with `RunLogUnavailableError` when the log's store
   * cannot be reached (nothing or part erased: repeat it). Optional: a log
   * without it keeps events until retention ends.
   */
  readonly eraseUser?: ((user_id: string) => Effect.Effect<number, RunLogUnavailableError>) | undefined
  /**
   * Forgets every ended run of the user's thread `thread_id`, with its events
   * and tombstone (the thread was deleted); runs still running keep their logs.
   * Returns the number of runs erased. Optional, like `eraseUser`.
   */
  readonly eraseThread?: ((user_id: string, thread_id: string) => Effect.Effect<number, RunLogUnavailableError>) | undefined
  /** The run as the log knows it. */
  readonly summary: (user_id: string, run_id: string) => Effect.Effect<RunSummary, RunLogReadError>
  /** The user's active and retained runs, newest first, at most `MAX_LIST_RUNS`, among their `MAX_LIST_SCAN` newest. */
  readonly list: (user_id: string, options?: ListOptions) => Effect.Effect<ReadonlyArray<RunSummary>, RunLogUnavailableError>
  /**
   * Events with `seq > after_seq`, in order: at most `maxEvents` of them and
   * about `maxBytes` of frames (always at least one when one exists).
   */
  readonly read: (
    user_id: string,
    run_id: string,
    after_seq: number,
    limits: { readonly maxEvents: number; readonly maxBytes: number }
  ) => Effect.Effect<LogPage, RunLogReadError | AfterSeqError>
  /** What the log holds now. */
  readonly stats: Effect.Effect<RunLogStats>
  /** Waits until the run has an event with `seq > after_seq`, or has ended, or is gone (then it fails). */
  readonly waitFor: (user_id: string, run_id: string, after_seq: number) => Effect.Effect<void, RunLogReadError>
}>()("agentwire/RunLog") {}

/**
 * What `follow` yields: an event; (once) the point where the replay caught up
 * with the log; or, with `idleMs`, a sign that nothing came for that long.
 */
export type FollowItem =
  | { readonly _tag: "Event"; readonly event: LoggedEvent }
  | { readonly _tag: "CaughtUp"; readonly summary: RunSummary }
  | { readonly _tag: "Idle" }

/** Options of `follow`. */
export interface FollowOptions {
  /** Events and bytes read per page (default `FOLLOW_PAGE`). */
  readonly pageLimits?: { readonly maxEvents: number; readonly maxBytes: number } | undefined
  /** When set, an `Idle` item whenever nothing new came for this many milliseconds while waiting (e.g. SSE keepalives). */
  readonly idleMs?: number | undefined
}

const IDLE: FollowItem = { _tag: "Idle" }

/** Events read per page when following: enough to fill a socket's send buffer, small enough to pace it. */
export const FOLLOW_PAGE = { maxEvents: 256, maxBytes: 128 * 1024 } as const

/**
 * A run's events with `seq > after_seq`, in order, each once: first what the
 * log holds, then a `CaughtUp` marker, then each new event as it is appended,
 * until the run's last event. Pull-based: a slow consumer reads the next page
 * (at most `options.pageLimits`) only when it asks, so following costs no buffering. Fails when the run is
 * unknown, another user's, or expired (also when it expires while followed).
 */
export const follow = (
  log: RunLog["Service"],
  user_id: string,
  run_id: string,
  after_seq: number,
  options: FollowOptions = {}
): Stream.Stream<FollowItem, RunLogReadError | AfterSeqError> =>
  Stream.paginate({ cursor: after_seq, caughtUp: false }, (state) =>
    Effect.gen(function*() {
      const page = yield* log.read(user_id, run_id, state.cursor, options.pageLimits ?? FOLLOW_PAGE)
      const { events, summary } = page
      const items: Array<FollowItem> = events.map((event) => ({ _tag: "Event", event }))
      const cursor = events.length > 0 ? events[events.length - 1]!.seq : state.cursor
      const atEnd = cursor >= summary.last_seq
      let caughtUp = state.caughtUp
      if (atEnd && !caughtUp) {
        items.push({ _tag: "CaughtUp", summary })
        caughtUp = true
      }
      if (atEnd && summary.status !== "running") return [items, Option.none()] as const
      // nothing new: wait for the next append (or the run's end, or its expiry)
      if (events.length === 0) {
        if (options.idleMs === undefined) yield* log.waitFor(user_id, run_id, cursor)
        else if (Option.isNone(yield* Effect.timeoutOption(log.waitFor(user_id, run_id, cursor), options.idleMs))) items.push(IDLE)
      }
      return [items, Option.some({ cursor, caughtUp })] as const
    })
  )
