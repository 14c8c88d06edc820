/**
 * RunEmitter: the one place a run's events pass through.
 *
 * Bound to one run (its `UserExecutionContext`). Stamps each event with
 * `run_id`, `thread_id`, `user_id`, `seq` (1, 2, 3… with no gaps), `event_id`
 * and `timestamp`, then hands it on (to the bridge; later also to a run log).
 * Built by `layers/RunEmitter.ts`.
 *
 * @module
 */
import type { Effect } from "effect"
import type { AgentEventBody } from "../protocol/Protocol.ts"
import type { UserExecutionContext } from "./UserExecutionContext.ts"

export interface RunEmitter {
  readonly context: UserExecutionContext
  /** Stamps and delivers one event of `agent_name` at `depth`. */
  readonly emit: (agent_name: string, depth: number, body: AgentEventBody) => Effect.Effect<void>
  /** The `seq` of the last event emitted (0 before the first). */
  readonly lastSeq: () => number
}
