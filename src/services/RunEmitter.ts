/**
 * RunEmitter: the one place a run's events pass through.
 *
 * Bound to one run (its `UserExecutionContext`), and the only owner of that
 * run's sequence: the `AgentInstanceFactory` keeps at most one emitter per live
 * `run_id`, shared by the run's engine, its root agent and every sub-agent.
 *
 * Stamping happens when an `emit` effect *runs*, never when it is built: each
 * run of the effect takes the next `seq` (1, 2, 3… with no gaps), `event_id`
 * `<run_id>:<seq>` and the timestamp, encodes it once, appends it to the run's
 * log (`RunLog`), then delivers it (`WebSocketBridge`). Emits of one run are serialised, so `seq` order is
 * delivery order even when concurrent fibers emit. An effect that is built and
 * never run takes no `seq`; one that runs three times takes three.
 * Built by `layers/RunEmitter.ts`.
 *
 * @module
 */
import type { Effect } from "effect"
import type { AgentEventBody } from "../protocol/Protocol.ts"
import type { AgentOutcome } from "./AgentInstanceFactory.ts"
import type { UserExecutionContext } from "./UserExecutionContext.ts"

/**
 * Why a run is ended from outside: its user stopped it, it ran out of time,
 * the server shut down past its grace period, or its log is full (its own
 * events: `event_limit`; the process's retention budget: `log_full`; its
 * shared store unreachable with the outage buffer full, or refusing the
 * run's events: `log_unavailable`), or another instance already ended it
 * (`instance_lost`: this instance's lease had expired and its appends are
 * fenced; what the run still emits reaches no one).
 */
export type StopCause = "user_request" | "timeout" | "server_shutdown" | "event_limit" | "log_full" | "log_unavailable" | "instance_lost"

export interface RunEmitter {
  readonly context: UserExecutionContext
  /** Stamps and delivers one event of `agent_name` at `depth`, when run. */
  readonly emit: (agent_name: string, depth: number, body: AgentEventBody) => Effect.Effect<void>
  /** The `seq` of the last event emitted (0 before the first). */
  readonly lastSeq: () => number
  /**
   * The run's outcome as its clients saw it: set when the root (depth 0)
   * `agent_completed` passes, with the root `agent_error` before it if any.
   */
  readonly outcome: () => AgentOutcome | undefined
  /** Why the run is being interrupted from outside, once someone decided to (the first cause wins). */
  readonly stopCause: () => StopCause | undefined
  /** Records why the run is about to be interrupted; a later cause does not replace the first. */
  readonly setStopCause: (cause: StopCause) => void
  /**
   * Who ends the run when the emitter must (its log is full): the engine that
   * runs it registers here. The emitter records the cause, then calls it.
   */
  readonly onStopRequest: (handler: (cause: StopCause) => void) => void
  /**
   * An effect run once, just before the root (depth 0) `agent_completed` is
   * stamped: the engine gives the run's admission slot back there, so a
   * client that starts its next run on seeing the run end is not refused for
   * the slot of the run that just ended. A later call replaces an earlier one.
   */
  readonly beforeEnd: (effect: Effect.Effect<void>) => void
}
