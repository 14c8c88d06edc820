/**
 * `AgentInstanceFactory` over an `AgentRegistry`, a `RunLog` and a `WebSocketBridge`.
 *
 * Each instance gets its own `AgentContext`, bound to the run's emitter at the
 * instance's depth: thinking, tool calls and delegation all become events of
 * that run and no other. `run` guarantees the instance's terminal events:
 * whatever happens inside the agent (typed failure, defect, interruption), it
 * sends `agent_error` (on failure) then exactly one `agent_completed`.
 *
 * @module
 */
import { Cause, Duration, Effect, Exit, Layer, Option } from "effect"
import type { AgentErrorInfo } from "../protocol/Protocol.ts"
import { type AgentContext, AgentError, ToolError, type ToolOptions } from "../services/Agent.ts"
import { type AgentInstance, AgentInstanceFactory, type AgentOutcome } from "../services/AgentInstanceFactory.ts"
import { AgentRegistry, type RegisteredAgent } from "../services/AgentRegistry.ts"
import type { RunEmitter } from "../services/RunEmitter.ts"
import { generateId, type UserExecutionContext } from "../services/UserExecutionContext.ts"
import { RunLog, terminalReserve } from "../services/RunLog.ts"
import { WebSocketBridge } from "../services/WebSocketBridge.ts"
import * as RunEmitterLayer from "./RunEmitter.ts"

/** Deepest sub-agent nesting allowed; deeper delegation fails with `MAX_DEPTH`. */
export const MAX_DEPTH = 8

const elapsedMs = (startedAt: number): number => Math.round((performance.now() - startedAt) * 1000) / 1000

/** A value that survives `JSON.stringify`, or its string form. */
const jsonSafe = (value: unknown): unknown => {
  try {
    return JSON.stringify(value) === undefined ? null : value
  } catch {
    return String(value)
  }
}

const describe = (error: unknown): string =>
  typeof error === "object" && error !== null && "message" in error && typeof error.message === "string"
    ? error.message
    : String(error)

/** Turns how an agent's program ended into the error it reports. */
const errorOf = (cause: Cause.Cause<AgentError | ToolError>): typeof AgentErrorInfo.Type => {
  const failure = Cause.findErrorOption(cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    return error._tag === "AgentError"
      ? { code: error.code, message: error.message }
      : { code: error.status === "timeout" ? "TOOL_TIMEOUT" : "TOOL_FAILED", message: `${error.tool_name}: ${error.message}` }
  }
  if (Cause.hasInterruptsOnly(cause)) return { code: "CANCELLED", message: "the run was cancelled" }
  return { code: "INTERNAL", message: `agent crashed: ${describe(Cause.squash(cause))}` }
}

/** Builds the factory from its dependencies; exposed for hand wiring. */
export const make = Effect.gen(function*() {
  const bridge = yield* WebSocketBridge
  const log = yield* RunLog
  const registry = yield* AgentRegistry

  const instance = (agent: RegisteredAgent, context: UserExecutionContext, emitter: RunEmitter, depth: number): AgentInstance => {
    const emit = (body: Parameters<RunEmitter["emit"]>[2]) => emitter.emit(agent.name, depth, body)

    const tool = <A, E, R>(
      tool_name: string,
      parameters: Readonly<Record<string, unknown>>,
      effect: Effect.Effect<A, E, R>,
      options?: ToolOptions<E>
    ): Effect.Effect<A, ToolError, R> =>
      Effect.suspend(() => {
        const execution_id = generateId("tool")
        const startedAt = performance.now()
        const limited: Effect.Effect<Option.Option<A>, E, R> = options?.timeout === undefined
          ? Effect.map(effect, Option.some)
          : Effect.timeoutOption(effect, options.timeout)
        const completed = (success: boolean, results: { status: "success" | "error" | "timeout" | "cancelled"; output?: unknown; error?: string }) =>
          emit({ type: "tool_completed", tool_name, execution_id, success, results, duration_ms: elapsedMs(startedAt) })
        // executing and completed are sent uninterruptibly as a pair; only the tool itself can be interrupted
        return Effect.uninterruptibleMask((restore) =>
          emit({ type: "tool_executing", tool_name, execution_id, parameters: jsonSafe(parameters) as Record<string, unknown> }).pipe(
            Effect.andThen(Effect.exit(restore(limited))),
            Effect.flatMap((exit): Effect.Effect<A, ToolError> => {
              if (Exit.isSuccess(exit)) {
                if (Option.isSome(exit.value)) {
                  return Effect.as(completed(true, { status: "success", output: jsonSafe(exit.value.value) }), exit.value.value)
                }
                const message = `timed out after ${Duration.format(Duration.fromInputUnsafe(options?.timeout ?? 0))}`
                return Effect.andThen(
                  completed(false, { status: "timeout", error: message }),
                  Effect.fail(new ToolError({ tool_name, execution_id, status: "timeout", message }))
                )
              }
              const failure = Cause.findErrorOption(exit.cause)
              const message = Option.isSome(failure)
                ? (options?.describeError?.(failure.value) ?? describe(failure.value))
                : Cause.hasInterruptsOnly(exit.cause)
                ? "cancelled"
                : `tool crashed: ${describe(Cause.squash(exit.cause))}`
              return Effect.andThen(
                completed(false, { status: Cause.hasInterruptsOnly(exit.cause) ? "cancelled" : "error", error: message }),
                Cause.hasInterruptsOnly(exit.cause)
                  ? Effect.failCause(exit.cause as Cause.Cause<never>)
                  : Effect.fail(new ToolError({ tool_name, execution_id, status: "error", message }))
              )
            })
          )
        )
      })

    const delegate = (agent_name: string, request: string): Effect.Effect<string, AgentError> =>
      depth + 1 > MAX_DEPTH
        ? Effect.fail(new AgentError({ code: "MAX_DEPTH", message: `sub-agents may nest at most ${MAX_DEPTH} deep` }))
        : create(agent_name, context, { emitter, depth: depth + 1 }).pipe(
          Effect.mapError((e) => new AgentError({ code: "UNKNOWN_AGENT", message: e.message })),
          Effect.flatMap((child) => child.run(request)),
          Effect.flatMap((outcome) =>
            outcome.status === "completed"
              ? Effect.succeed(outcome.final_response)
              : Effect.fail(new AgentError({ code: "SUBAGENT_FAILED", message: `${agent_name}: ${outcome.error?.message ?? "failed"}` }))
          )
        )

    const agentContext: AgentContext = {
      agent_name: agent.name,
      depth,
      user_id: context.user_id,
      thread_id: context.thread_id,
      run_id: context.run_id,
      request_id: context.request_id,
      think: (reasoning, step_number) =>
        emit(step_number === undefined ? { type: "agent_thinking", reasoning } : { type: "agent_thinking", reasoning, step_number }),
      partial: (message_id, delta) => emit({ type: "partial_result", message_id, delta }),
      tool,
      delegate
    }

    // how an interrupted instance ends: the cause is the run's (set by whoever stopped it)
    const interrupted = (duration_ms: number): Effect.Effect<AgentOutcome> => {
      if (depth > 0) {
        const final_response = `${agent.name} was cancelled`
        return Effect.as(emit({ type: "agent_completed", status: "cancelled", final_response, duration_ms }), {
          status: "cancelled",
          final_response,
          duration_ms
        })
      }
      const cause = emitter.stopCause() ?? "user_request"
      if (cause === "event_limit" || cause === "log_full" || cause === "log_unavailable" || cause === "instance_lost") {
        const error = cause === "event_limit"
          ? { code: "EVENT_LIMIT", message: `the run sent too many events: a run is stopped after ${log.settings.maxEventsPerRun - terminalReserve(log.settings.maxEventsPerRun)} events, so that its last ones fit in AGENTWIRE_MAX_EVENTS_PER_RUN (${log.settings.maxEventsPerRun})` }
          : cause === "log_full"
          ? { code: "LOG_FULL", message: "the run log is full: the user's runs in progress exceed their share (AGENTWIRE_RETENTION_BYTES_PER_USER), or all runs in progress exceed AGENTWIRE_RETENTION_BYTES" }
          : cause === "log_unavailable"
          ? { code: "LOG_UNAVAILABLE", message: "the run log (Redis) cannot keep this run's events: it is unreachable and this instance's buffer for it is full (AGENTWIRE_REDIS_BUFFER_EVENTS), or it refused them" }
          // this instance's lease expired: its local sockets get these; the log keeps them only if no other instance took the run over
          : { code: "INSTANCE_LOST", message: "the instance running this run lost its lease (paused or cut off from Redis longer than AGENTWIRE_INSTANCE_LEASE_MS): the run cannot go on" }
        const final_response = `${agent.name} failed: ${error.message}`
        return emit({ type: "agent_error", error }).pipe(
          Effect.andThen(emit({ type: "agent_completed", status: "failed", final_response, duration_ms })),
          Effect.as<AgentOutcome>({ status: "failed", final_response, duration_ms, error })
        )
      }
      if (cause === "timeout") {
        const error = { code: "RUN_TIMEOUT", message: "the run did not finish within its time limit" }
        const final_response = `${agent.name} timed out: ${error.message}`
        return emit({ type: "agent_error", error }).pipe(
          Effect.andThen(emit({ type: "agent_completed", status: "timed_out", final_response, duration_ms })),
          Effect.as<AgentOutcome>({ status: "timed_out", final_response, duration_ms, error })
        )
      }
      const final_response = cause === "user_request" ? "stopped by the user" : "stopped: the server is shutting down"
      return emit({ type: "agent_stopped", reason: cause }).pipe(
        Effect.andThen(emit({ type: "agent_completed", status: "cancelled", final_response, duration_ms })),
        Effect.as<AgentOutcome>({ status: "cancelled", final_response, duration_ms })
      )
    }

    // started is sent uninterruptibly, only the agent's own program can be interrupted, and the
    // terminal events follow whatever happened, so every instance sends exactly one agent_completed
    const run = (request: string): Effect.Effect<AgentOutcome> =>
      Effect.uninterruptible(Effect.suspend(() => {
        const startedAt = performance.now()
        const started = emit(
          depth === 0
            ? { type: "agent_started", task_description: request, request_id: context.request_id }
            : { type: "agent_started", task_description: request }
        )
        return Effect.andThen(started, Effect.exit(Effect.interruptible(agent.run(request, agentContext)))).pipe(
          Effect.flatMap((exit) => {
            const duration_ms = elapsedMs(startedAt)
            if (Exit.isSuccess(exit)) {
              const outcome: AgentOutcome = { status: "completed", final_response: exit.value, duration_ms }
              return Effect.as(emit({ type: "agent_completed", status: "completed", final_response: exit.value, duration_ms }), outcome)
            }
            if (Cause.hasInterruptsOnly(exit.cause)) return interrupted(duration_ms)
            const error = errorOf(exit.cause)
            const final_response = `${agent.name} failed: ${error.message}`
            const outcome: AgentOutcome = { status: "failed", final_response, duration_ms, error }
            return emit({ type: "agent_error", error }).pipe(
              Effect.andThen(emit({ type: "agent_completed", status: "failed", final_response, duration_ms })),
              Effect.as(outcome)
            )
          })
        )
      }))

    return { agent_name: agent.name, depth, context, run }
  }

  // the one sequence of each live run: shared by its engine, its root agent and every sub-agent
  const emitters = new Map<string, { readonly emitter: RunEmitter; holders: number }>()
  const acquireEmitter = (context: UserExecutionContext): RunEmitter => {
    const held = emitters.get(context.run_id)
    if (held !== undefined) {
      held.holders++
      return held.emitter
    }
    const emitter = RunEmitterLayer.make(context, { log, bridge })
    emitters.set(context.run_id, { emitter, holders: 1 })
    return emitter
  }
  const releaseEmitter = (run_id: string): boolean => {
    const held = emitters.get(run_id)
    if (held === undefined || --held.holders > 0) return false
    emitters.delete(run_id)
    return true
  }
  // the last holder gone, the run's log is closed (a run that never sent its terminal event ends cancelled)
  const emitterFor = (context: UserExecutionContext) =>
    Effect.acquireRelease(
      Effect.sync(() => acquireEmitter(context)),
      (emitter) => Effect.suspend(() => releaseEmitter(emitter.context.run_id) ? log.release(emitter.context.run_id) : Effect.void)
    )

  const releaseRoot = (run_id: string) => Effect.suspend(() => releaseEmitter(run_id) ? log.release(run_id) : Effect.void)

  // a sub-agent shares its parent's emitter; a root instance holds the run's emitter while it runs
  const create = (agent_name: string | undefined, context: UserExecutionContext, parent?: { readonly emitter: RunEmitter; readonly depth: number }) =>
    Effect.map(registry.get(agent_name), (agent): AgentInstance => {
      if (parent !== undefined) return instance(agent, context, parent.emitter, parent.depth)
      return {
        agent_name: agent.name,
        depth: 0,
        context,
        // the emitter is held for the run without a scope of its own (a scope per run costs more than this)
        run: (request) =>
          Effect.uninterruptible(Effect.suspend(() => {
            const emitter = acquireEmitter(context)
            return Effect.ensuring(instance(agent, context, emitter, 0).run(request), releaseRoot(context.run_id))
          }))
      }
    })

  return AgentInstanceFactory.of({
    agentNames: [registry.defaultAgent, ...registry.agents.map((a) => a.name).filter((n) => n !== registry.defaultAgent)],
    resolve: (agent_name) => Effect.map(registry.get(agent_name), (agent) => agent.name),
    create: (agent_name, context) => create(agent_name, context),
    emitterFor
  })
})

/** The factory. Requires the bridge, the run log and the agent registry. */
export const layer: Layer.Layer<AgentInstanceFactory, never, WebSocketBridge | RunLog | AgentRegistry> = Layer.effect(
  AgentInstanceFactory,
  make
)
