/**
 * Builds the `RunEmitter` of one run.
 *
 * Each `emit` effect, when it runs, stamps the event (`seq`, `event_id`
 * `<run_id>:<seq>`, timestamp), encodes it once, appends it to the run's log,
 * then delivers it: in one synchronous step when both the log and the bridge
 * work synchronously (the in-memory ones), otherwise under this run's lock,
 * uninterruptibly: `seq` order is log order and delivery order, a stamped
 * event is always logged before anyone sees it, and an emit interrupted while
 * waiting for the lock takes no `seq`. `event_id` is unique and stable for
 * clients that deduplicate after a reconnect.
 *
 * When the log answers that the run must end (`event_limit`, `log_full`,
 * `log_unavailable`: that last one not logged), the
 * event is still delivered, and the emitter asks the run's engine to stop it
 * with that cause; the events its agents send while they end fit in the log's
 * reserve. An event the log refuses (past its hard cap) takes no `seq` and is
 * not delivered; so is an event of a run another instance took over
 * (`fenced`), and the run is then stopped with `instance_lost`.
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
import type { AppendResult, RunLog } from "../services/RunLog.ts"
import type { UserExecutionContext } from "../services/UserExecutionContext.ts"
import type { WebSocketBridge } from "../services/WebSocketBridge.ts"

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

/** A stamp field's key in a body's JSON (or a value that looks like one: then the event is encoded whole). */
const STAMP_KEY = /"(?:event_id|run_id|thread_id|user_id|agent_name|depth|seq|timestamp)":/

/** Where an emitter's events go: the run log first, then the bridge. */
export interface EmitterSinks {
  readonly log: Pick<RunLog["Service"], "append" | "appendSync">
  readonly bridge: Pick<WebSocketBridge["Service"], "emit" | "deliverSync">
}

/** A run emitter over `sinks`. */
export const make = (context: UserExecutionContext, sinks: EmitterSinks): RunEmitter => {
  let seq = 0
  let rootError: AgentOutcome["error"]
  let outcome: AgentOutcome | undefined
  let stopCause: StopCause | undefined
  let stopHandler: ((cause: StopCause) => void) | undefined
  let refusedLogged = false
  const lock = Semaphore.makeUnsafe(1)

  const setStopCause = (cause: StopCause) => {
    stopCause ??= cause
  }

  const stamp = (agent_name: string, depth: number, body: Parameters<RunEmitter["emit"]>[2]): AgentEvent => {
    seq++
    // The body's own fields come first; the stamp cannot be overridden by an agent.
    return {
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
  }

  /** Tracks the run's outcome from the events that passed. */
  const observe = (event: AgentEvent) => {
    if (event.depth !== 0) return
    if (event.type === "agent_error") rootError = event.error
    else if (event.type === "agent_completed") {
      const { duration_ms, final_response, status } = event
      outcome = rootError === undefined
        ? { status, final_response, duration_ms }
        : { status, final_response, duration_ms, error: rootError }
    }
  }

  /** Acts on the log's answer; false when the event must not be delivered. */
  const afterAppend = (result: AppendResult): boolean => {
    if (result === "ok") return true
    if (result === "refused" || result === "fenced") {
      seq--
      if (result === "fenced") {
        // another instance ended the run (the log said so once): stop here too, without the hard-cap error
        refusedLogged = true
        if (stopCause === undefined) {
          setStopCause("instance_lost")
          stopHandler?.("instance_lost")
        }
      }
      return false
    }
    if (stopCause === undefined) {
      setStopCause(result)
      stopHandler?.(result)
    }
    return true
  }

  // said once per run: a run past its log's hard cap drops its further events
  const refused = (type: AgentEvent["type"]): Effect.Effect<void> => {
    if (refusedLogged) return Effect.void
    refusedLogged = true
    return Effect.logError("run log refused an event past its hard cap; later events of this run are dropped").pipe(
      Effect.annotateLogs({ run_id: context.run_id, user_id: context.user_id, event_type: type })
    )
  }

  // The frame is the body's JSON with the stamp's appended: the stamp's run-wide parts are encoded
  // once per run, so each event encodes only its body (JSON.stringify costs per property, and the
  // stamp has eight). Byte for byte `JSON.stringify(event)`; a body that carries a stamp field or a
  // `toJSON` is encoded whole instead (the stamp must win, as in `stamp`).
  const runText = JSON.stringify(context.run_id).slice(1, -1)
  const openHead = `{"event_id":"${runText}:`
  const commaHead = `,"event_id":"${runText}:`
  const runPart = `","run_id":${JSON.stringify(context.run_id)},"thread_id":${JSON.stringify(context.thread_id)},"user_id":${
    JSON.stringify(context.user_id)
  },"agent_name":`
  // the parts between the two seqs and after the second, remembered while they do not change
  let agentOf = ""
  let depthOf = Number.NaN
  let middle = ""
  let timestampOf = ""
  let tail = ""
  const encode = (event: AgentEvent, body: object): string => {
    if ("toJSON" in body) return JSON.stringify(event)
    const text = JSON.stringify(body)
    if (STAMP_KEY.test(text)) return JSON.stringify(event)
    if (event.agent_name !== agentOf || event.depth !== depthOf) {
      agentOf = event.agent_name
      depthOf = event.depth
      middle = `${runPart}${JSON.stringify(agentOf)},"depth":${JSON.stringify(depthOf)},"seq":`
    }
    if (event.timestamp !== timestampOf) {
      timestampOf = event.timestamp
      tail = `,"timestamp":${JSON.stringify(timestampOf)}}`
    }
    const seq = event.seq
    return (text.length === 2 ? openHead : text.slice(0, -1) + commaHead) + seq + middle + seq + tail
  }

  const { appendSync } = sinks.log
  const { deliverSync } = sinks.bridge
  const emitNow: RunEmitter["emit"] = appendSync !== undefined && deliverSync !== undefined
    ? (agent_name, depth, body) =>
      Effect.suspend(() => {
        const event = stamp(agent_name, depth, body)
        const frame = encode(event, body)
        if (!afterAppend(appendSync(event, frame))) return refused(event.type)
        observe(event)
        deliverSync(event, frame)
        return Effect.void
      })
    : (agent_name, depth, body) =>
      lock.withPermit(Effect.uninterruptible(Effect.suspend(() => {
        const event = stamp(agent_name, depth, body)
        const frame = encode(event, body)
        return Effect.flatMap(sinks.log.append(event, frame), (result) => {
          if (!afterAppend(result)) return refused(event.type)
          observe(event)
          return sinks.bridge.emit(event, frame)
        })
      })))

  // run once before the root's agent_completed (the engine frees the run's admission slot there)
  let beforeEnd: Effect.Effect<void> | undefined
  const emit: RunEmitter["emit"] = (agent_name, depth, body) =>
    depth !== 0 || body.type !== "agent_completed"
      ? emitNow(agent_name, depth, body)
      : Effect.suspend(() => {
        const first = beforeEnd
        beforeEnd = undefined
        return first === undefined ? emitNow(agent_name, depth, body) : Effect.andThen(first, emitNow(agent_name, depth, body))
      })

  return {
    context,
    lastSeq: () => seq,
    outcome: () => outcome,
    stopCause: () => stopCause,
    setStopCause,
    onStopRequest: (handler) => {
      stopHandler = handler
    },
    beforeEnd: (effect) => {
      beforeEnd = effect
    },
    emit
  }
}
