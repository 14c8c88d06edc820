/**
 * Builds the `RunEmitter` of one run.
 *
 * Stamping is synchronous and the sink is called in the same step, so `seq`
 * order is delivery order. `event_id` is `<run_id>:<seq>`: unique, and stable
 * for clients that deduplicate after a reconnect.
 *
 * @module
 */
import type { Effect } from "effect"
import type { AgentEvent } from "../protocol/Protocol.ts"
import type { RunEmitter } from "../services/RunEmitter.ts"
import type { UserExecutionContext } from "../services/UserExecutionContext.ts"

/** A run emitter over `sink` (usually `WebSocketBridge.emit`). */
export const make = (
  context: UserExecutionContext,
  sink: (event: AgentEvent) => Effect.Effect<void>
): RunEmitter => {
  let seq = 0
  // events of this run stamped within the same millisecond share one ISO string
  let lastMs = -1
  let lastIso = ""
  const isoNow = (): string => {
    const now = Date.now()
    if (now !== lastMs) {
      lastMs = now
      lastIso = new Date(now).toISOString()
    }
    return lastIso
  }
  return {
    context,
    lastSeq: () => seq,
    emit: (agent_name, depth, body) => {
      seq++
      // The body's own fields come first; the stamp cannot be overridden by an agent.
      const event = {
        ...body,
        event_id: `${context.run_id}:${seq}`,
        run_id: context.run_id,
        thread_id: context.thread_id,
        user_id: context.user_id,
        agent_name,
        depth,
        seq,
        timestamp: isoNow()
      } as AgentEvent
      return sink(event)
    }
  }
}
