/**
 * Builds the `RunEmitter` of one run.
 *
 * Each `emit` effect, when it runs, stamps the event (`seq`, `event_id`
 * `<run_id>:<seq>`, timestamp) and delivers it: in one synchronous step when
 * the bridge delivers synchronously, otherwise under this run's lock,
 * uninterruptibly: `seq` order is delivery order, a stamped
 * event is always delivered, and an emit interrupted while waiting for the lock
 * takes no `seq`. `event_id` is unique and stable for clients that deduplicate
 * after a reconnect.
 *
 * Use one emitter per run: `AgentInstanceFactory` owns them (one per live
 * `run_id`); calling `make` twice for one run makes two sequences.
 *
 * @module
 */
import { Effect, Semaphore } from "effect"
import type { AgentEvent } from "../protocol/Protocol.ts"
import type { AgentOutcome } from "../services/AgentInstanceFactory.ts"
import type { RunEmitter, StopCause } from "../services/RunEmitter.ts"
import type { UserExecutionContext } from "../services/UserExecutionContext.ts"

// Events stamped within the same millisecond share one ISO string, across all runs of the
// process: a paced run emits once per few ms, so a per-run cache would rarely hit, while the
// runs of a busy process stamp many events per millisecond.
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

/**
 * A run emitter over `sink` (usually `WebSocketBridge.emit`). With
 * `deliverSync` (a synchronous delivery, e.g. `WebSocketBridge.deliverSync`),
 * each emit stamps and delivers in one synchronous step: nothing can run
 * between the two, so no lock is needed.
 */
export const make = (
  context: UserExecutionContext,
  sink: (event: AgentEvent) => Effect.Effect<void>,
  deliverSync?: (event: AgentEvent) => void
): RunEmitter => {
  let seq = 0
  let rootError: AgentOutcome["error"]
  let outcome: AgentOutcome | undefined
  let stopCause: StopCause | undefined
  const lock = Semaphore.makeUnsafe(1)

  const stamp = (agent_name: string, depth: number, body: Parameters<RunEmitter["emit"]>[2]): AgentEvent => {
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
    if (depth === 0) {
      if (event.type === "agent_error") rootError = event.error
      else if (event.type === "agent_completed") {
        const { duration_ms, final_response, status } = event
        outcome = rootError === undefined
          ? { status, final_response, duration_ms }
          : { status, final_response, duration_ms, error: rootError }
      }
    }
    return event
  }

  return {
    context,
    lastSeq: () => seq,
    outcome: () => outcome,
    stopCause: () => stopCause,
    setStopCause: (cause) => {
      stopCause ??= cause
    },
    emit: deliverSync !== undefined
      ? (agent_name, depth, body) => Effect.sync(() => deliverSync(stamp(agent_name, depth, body)))
      : (agent_name, depth, body) => lock.withPermit(Effect.uninterruptible(Effect.suspend(() => sink(stamp(agent_name, depth, body)))))
  }
}
