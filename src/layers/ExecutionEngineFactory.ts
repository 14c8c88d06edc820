/**
 * `ExecutionEngineFactory` over an `AgentInstanceFactory` and a `WebSocketBridge`.
 *
 * An engine is allocated per run and holds only that run's state: its context
 * and its emitter (the run's sequence counter). `start` forks each run into a
 * `FiberMap` keyed by `run_id`, so a run can be found and interrupted by id;
 * closing the layer interrupts every run, and each still sends its terminal
 * events before the bridge goes away.
 *
 * @module
 */
import { Effect, Exit, Fiber, FiberMap, Layer } from "effect"
import { AgentInstanceFactory, type AgentOutcome } from "../services/AgentInstanceFactory.ts"
import { AdmissionClosedError, ExecutionEngineFactory, type UserExecutionEngine } from "../services/ExecutionEngineFactory.ts"
import type { UserExecutionContext } from "../services/UserExecutionContext.ts"
import { WebSocketBridge } from "../services/WebSocketBridge.ts"
import type { RunEmitter } from "../services/RunEmitter.ts"

const cancelledOutcome: AgentOutcome = {
  status: "failed",
  final_response: "the run was cancelled",
  duration_ms: 0,
  error: { code: "CANCELLED", message: "the run was cancelled" }
}

/** Builds the factory from its dependencies; exposed for hand wiring. */
export const make = Effect.gen(function*() {
  const instances = yield* AgentInstanceFactory
  // events reach the bridge through the instances' emitters; requiring it here keeps the
  // wiring order in the types: no engine factory exists before a bridge does
  yield* WebSocketBridge
  const runs = yield* FiberMap.make<string, AgentOutcome>()
  let liveEngines = 0
  let admissionOpen = true

  const engineFor = (emitter: RunEmitter): UserExecutionEngine => {
    const context = emitter.context
    return {
      context,
      emitter,
      run: (agent_name, request) =>
        Effect.gen(function*() {
          const agent = yield* instances.create(agent_name, context)
          yield* Effect.logInfo("run started")
          const startedAt = performance.now()
          // onExit runs even when the run is interrupted, so every run gets its "run ended" line
          return yield* agent.run(request).pipe(Effect.onExit(() => {
            const outcome = emitter.outcome() ?? cancelledOutcome
            return Effect.logInfo("run ended").pipe(Effect.annotateLogs({
              outcome: outcome.status,
              duration_ms: Math.round(performance.now() - startedAt),
              events: emitter.lastSeq(),
              ...(outcome.error ? { error_code: outcome.error.code } : {})
            }))
          }))
        }).pipe(Effect.annotateLogs({ user_id: context.user_id, run_id: context.run_id, agent: agent_name ?? "(default)" }))
    }
  }

  // the engine holds the run's one emitter (shared with the agent instances of that run_id)
  const createForUser = (context: UserExecutionContext) =>
    Effect.acquireRelease(
      Effect.map(instances.emitterFor(context), (emitter) => {
        liveEngines++
        return engineFor(emitter)
      }),
      () => Effect.sync(() => void liveEngines--)
    )

  // repeated until empty: a run forked while the previous clear was running is interrupted too
  const interruptAll: Effect.Effect<void> = Effect.suspend(() =>
    Effect.andThen(FiberMap.clear(runs), Effect.flatMap(FiberMap.size(runs), (left) => (left > 0 ? interruptAll : Effect.void)))
  )

  return ExecutionEngineFactory.of({
    createForUser,
    start: (context, agent_name, request) =>
      Effect.gen(function*() {
        const resolved = yield* instances.resolve(agent_name)
        let emitter: RunEmitter | undefined
        const run = Effect.scoped(Effect.flatMap(createForUser(context), (engine) => {
          emitter = engine.emitter
          return engine.run(resolved, request)
        })).pipe(
          // resolved above, so the agent exists; a registry that changed meanwhile is a defect
          Effect.orDie
        )
        // checked right before the fork, with no suspension between: no run starts after admission closed
        if (!admissionOpen) return yield* new AdmissionClosedError()
        if (yield* FiberMap.has(runs, context.run_id)) {
          return yield* Effect.die(new Error(`run ${context.run_id} is already running: every run needs a fresh run_id`))
        }
        const fiber = yield* FiberMap.run(runs, context.run_id, run)
        return {
          run_id: context.run_id,
          thread_id: context.thread_id,
          request_id: context.request_id,
          agent_name: resolved,
          // what the run reported on the wire; the fiber's own result only if it never got that far
          await: Effect.map(Fiber.await(fiber), (exit) =>
            emitter?.outcome() ?? (Exit.isSuccess(exit) ? exit.value : cancelledOutcome))
        }
      }),
    interrupt: (run_id) =>
      Effect.flatMap(FiberMap.has(runs, run_id), (running) => running ? Effect.as(FiberMap.remove(runs, run_id), true) : Effect.succeed(false)),
    closeAdmission: Effect.sync(() => {
      admissionOpen = false
    }),
    admissionOpen: Effect.sync(() => admissionOpen),
    // repeated until empty: a run forked while the previous clear was running is interrupted too
    interruptAll,
    activeRuns: FiberMap.size(runs),
    liveEngines: Effect.sync(() => liveEngines)
  })
})

/** The factory. Requires the agent instance factory and the bridge. */
export const layer: Layer.Layer<ExecutionEngineFactory, never, AgentInstanceFactory | WebSocketBridge> = Layer.effect(
  ExecutionEngineFactory,
  make
)
