/**
 * `ExecutionEngineFactory` over an `AgentInstanceFactory`, a `WebSocketBridge`
 * and a `RunAdmission`.
 *
 * An engine is allocated per run and holds only that run's state: its context
 * and its emitter (the run's sequence counter). `start` admits a run, then
 * forks it into a `FiberMap` keyed by `run_id`. The run's fiber is
 * uninterruptible except inside the agents' own programs, so every run sends
 * `agent_started` first and exactly one root `agent_completed` last, whenever
 * the stop lands. Stops record their cause on the run's emitter before they
 * interrupt (first cause wins): `user_request` (`stop`, `interrupt`),
 * `timeout` (the run's timer, `runTimeoutMs`), `server_shutdown`
 * (`interruptAll`, and closing the layer). A run's admission slot is released
 * just before its root `agent_completed` (waiting at most
 * `RELEASE_BEFORE_END_MS` for it), or when its fiber ends if it never sent
 * one; a stop answers only once the slots of the runs it stopped are free
 * again.
 *
 * History (when a `ConversationStore` is provided around the layer): each root
 * run is recorded when it starts (status `running` and its request; the
 * thread is created, titled from the request) and when it ends (its outcome,
 * plus the answer when it completed). The store queues these
 * writes (`ConversationStoreBuffered`), so recording never waits on a database;
 * a failed record is logged, never a failed run. A start that names a thread
 * another user already has is refused (`AdmissionError` `thread_not_found`);
 * when the store cannot tell within `THREAD_CHECK_TIMEOUT`, the run starts
 * (its history is still keyed by its own user, so nothing leaks).
 *
 * With a `RunControl` in the context (several instances), `stop` also stops
 * the selected runs executing on other instances, `runState` reports such a
 * run as `active`, and this instance answers other instances' stops of its
 * runs. Without one, everything stays local. A repeated `request_id` whose run
 * this instance does not know (it executes elsewhere) awaits that run's end
 * in the `RunLog` (when one is in the context) and answers its outcome.
 *
 * @module
 */
import { Clock, Deferred, Effect, Exit, Fiber, FiberMap, Layer, Option, Result } from "effect"
import { ConversationStore, titleOf } from "../services/ConversationStore.ts"
import { createHash } from "node:crypto"
import { AgentInstanceFactory, type AgentOutcome } from "../services/AgentInstanceFactory.ts"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import {
  ExecutionEngineFactory,
  type RunHandle,
  type RunSelector,
  type RunState,
  type StartOptions,
  type UserExecutionEngine
} from "../services/ExecutionEngineFactory.ts"
import { AdmissionError, RunAdmission } from "../services/RunAdmission.ts"
import { RunLog } from "../services/RunLog.ts"
import { decodeServerFrame } from "../protocol/Protocol.ts"
import { RunControl } from "../services/RunControl.ts"
import type { RunEmitter, StopCause } from "../services/RunEmitter.ts"
import { InstanceLease } from "./InstanceLeaseRedis.ts"
import type { UserExecutionContext } from "../services/UserExecutionContext.ts"
import { DEFAULT_RUN_TIMEOUT_MS } from "./AgentwireConfig.ts"
import { WebSocketBridge } from "../services/WebSocketBridge.ts"

/** Ended runs remembered (for `runState` and duplicate starts), oldest forgotten first: about 400 bytes each. */
export const MAX_ENDED_RUNS = 100_000

/** Characters of an ended run's answer kept for a duplicate start's `await`. */
const MAX_REMEMBERED_RESPONSE = 256

const cancelledOutcome: AgentOutcome = {
  status: "cancelled",
  final_response: "the run was cancelled",
  duration_ms: 0
}

/** How long a start waits for the store to say whose a named thread is. */
export const THREAD_CHECK_TIMEOUT = "500 millis"

/** Longest wait for a run's admission slot to be given back before its root `agent_completed` is sent. */
export const RELEASE_BEFORE_END_MS = 1_000

/** A run in flight, as the engine tracks it. */
interface ActiveRun {
  readonly context: UserExecutionContext
  readonly agent_name: string
  fiber: Fiber.Fiber<AgentOutcome> | undefined
  emitter: RunEmitter | undefined
  cause: StopCause | undefined
  readonly done: Deferred.Deferred<AgentOutcome>
  /** Done once the run's admission slot was given back (after `done`): what a stop waits for before it answers. */
  readonly released: Deferred.Deferred<void>
  /** When the run times out: the clock's monotonic time, ms. */
  readonly deadline: number
  /** Its timeout was asked for (the timer does not ask twice). */
  timedOut: boolean
}

/** Builds the factory from its dependencies; exposed for hand wiring. */
export const make = Effect.gen(function*() {
  const instances = yield* AgentInstanceFactory
  // events reach the bridge through the instances' emitters; requiring it here keeps the
  // wiring order in the types: no engine factory exists before a bridge does
  yield* WebSocketBridge
  const admission = yield* RunAdmission
  // the run timeout of the surrounding config, or the default
  const runTimeoutMs = Option.match(yield* Effect.serviceOption(AgentwireConfig), {
    onNone: () => DEFAULT_RUN_TIMEOUT_MS,
    onSome: (config) => config.runTimeoutMs
  })
  const history = Option.getOrUndefined(yield* Effect.serviceOption(ConversationStore))
  // runs executing on other instances (several instances): optional, so one process needs nothing more
  const control = Option.getOrUndefined(yield* Effect.serviceOption(RunControl))
  // the shared log tells the outcome of a run this instance does not know (it executes elsewhere)
  const log = Option.getOrUndefined(yield* Effect.serviceOption(RunLog))
  const runs = yield* FiberMap.make<string, AgentOutcome>()
  const active = new Map<string, ActiveRun>()
  const ended = new Map<string, { readonly user_id: string; readonly thread_id: string; readonly agent_name: string; readonly outcome: AgentOutcome }>()
  const idleWaiters = new Set<() => void>()
  // ended runs whose admission slot is being given back
  let releasing = 0
  let liveEngines = 0

  /** Asks a run to end for `cause`, without waiting. */
  const requestStop = (run: ActiveRun, cause: StopCause) => {
    run.cause ??= cause
    run.emitter?.setStopCause(run.cause)
    run.fiber?.interruptUnsafe()
  }

  // The runs' timeouts: one timer fiber for all runs, not a fiber and a timer per run. Every run has
  // the same timeout and `active` keeps start order, so deadlines come in `active`'s order: the timer
  // sleeps until the first pending one, stops the runs that are due, and waits for a start when none runs.
  let wakeTimer: (() => void) | undefined
  // the clock of the layer (a test's TestClock): deadlines and the timer's sleeps on the same one
  const clock: Clock.Clock = yield* Effect.clockWith(Effect.succeed)
  const nowMs = () => Number(clock.monotonicTimeNanosUnsafe() / 1_000_000n)
  const timer: Effect.Effect<never> = Effect.forever(Effect.suspend(() => {
    const now = nowMs()
    let next: number | undefined
    for (const run of active.values()) {
      if (run.timedOut) continue
      if (run.deadline > now) {
        next = run.deadline
        break
      }
      run.timedOut = true
      requestStop(run, "timeout")
    }
    if (next !== undefined) return Effect.sleep(next - now)
    return Effect.callback<void>((resume) => {
      wakeTimer = () => {
        wakeTimer = undefined
        resume(Effect.void)
      }
      return Effect.sync(() => void (wakeTimer = undefined))
    })
  }))
  yield* Effect.forkScoped(timer)

  // stop every run before the FiberMap's own finalizer interrupts them: their cause is shutdown
  yield* Effect.addFinalizer(() =>
    Effect.suspend(() => {
      const all = Array.from(active.values())
      for (const run of all) requestStop(run, "server_shutdown")
      return Effect.forEach(all, (run) => Deferred.await(run.done), { discard: true })
    })
  )

  /** A history write: queued by the store; its failure is logged, never the run's. */
  const recorded = (write: Effect.Effect<void, { readonly message: string }>) =>
    Effect.catch(write, (e) => Effect.logWarning("run not recorded in history").pipe(Effect.annotateLogs({ error: e.message })))

  /** Refuses a start on a thread id that another user already has. */
  const checkThread = (context: UserExecutionContext): Effect.Effect<void, AdmissionError> =>
    history === undefined ? Effect.void : history.threadAccess({ user_id: context.user_id, thread_id: context.thread_id }).pipe(
      Effect.timeoutOption(THREAD_CHECK_TIMEOUT),
      Effect.map(Option.getOrElse(() => "none" as const)),
      Effect.catch((e) => Effect.as(Effect.logWarning("thread owner unknown: history unavailable").pipe(Effect.annotateLogs({ error: e.message })), "none" as const)),
      Effect.flatMap((access) => access === "foreign" ? Effect.fail(new AdmissionError({ reason: "thread_not_found" })) : Effect.void)
    )

  const engineFor = (emitter: RunEmitter): UserExecutionEngine => {
    const context = emitter.context
    return {
      context,
      emitter,
      run: (agent_name, request) =>
        Effect.gen(function*() {
          const agent = yield* instances.create(agent_name, context)
          // debug: the info line of a run is "run ended" (outcome, duration, events); a second
          // synchronous log write per run start measurably costs a busy server (docs/benchmarks.md)
          yield* Effect.logDebug("run started")
          const startedAt = performance.now()
          const record = history === undefined ? undefined : {
            run_id: context.run_id,
            user_id: context.user_id,
            thread_id: context.thread_id,
            agent_name: agent.agent_name,
            started_at: Date.now()
          }
          const title = titleOf(request)
          if (history !== undefined && record !== undefined) {
            // the request is stored now: a crash mid-run keeps it (the run is marked INSTANCE_LOST at the next start)
            yield* recorded(history.recordRun({ ...record, status: "running" }, { title, messages: [{ role: "user", content: request }] }))
          }
          // onExit runs even when the run is interrupted, so every run gets its "run ended" line
          return yield* agent.run(request).pipe(Effect.onExit((exit) => {
            // no root agent_completed passed the emitter (e.g. fenced: another instance ended the run): the agent's own
            const outcome = emitter.outcome() ?? (Exit.isSuccess(exit) ? exit.value : cancelledOutcome)
            const ended = history === undefined || record === undefined ? Effect.void : recorded(history.recordRun({
              ...record,
              status: outcome.status,
              ended_at: Date.now(),
              final_response: outcome.final_response,
              ...(outcome.error ? { error_code: outcome.error.code } : {})
            }, {
              title,
              messages: outcome.status === "completed" ? [{ role: "assistant", content: outcome.final_response }] : []
            }))
            return Effect.andThen(ended, Effect.logInfo("run ended").pipe(Effect.annotateLogs({
              outcome: outcome.status,
              duration_ms: Math.round(performance.now() - startedAt),
              events: emitter.lastSeq(),
              ...(outcome.error ? { error_code: outcome.error.code } : {})
            })))
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

  // an ended run is remembered small: its answer is cut to MAX_REMEMBERED_RESPONSE characters
  const small = (outcome: AgentOutcome): AgentOutcome =>
    outcome.final_response.length <= MAX_REMEMBERED_RESPONSE
      ? outcome
      : { ...outcome, final_response: `${outcome.final_response.slice(0, MAX_REMEMBERED_RESPONSE)}…` }
  const remember = (run: ActiveRun, outcome: AgentOutcome) => {
    ended.set(run.context.run_id, { user_id: run.context.user_id, thread_id: run.context.thread_id, agent_name: run.agent_name, outcome: small(outcome) })
    if (ended.size > MAX_ENDED_RUNS) ended.delete(ended.keys().next().value!)
  }

  /**
   * The outcome of a run this instance neither runs nor remembers (it executes or ran on another
   * instance), from the log: once the run has ended, its root `agent_completed` (and `agent_error`);
   * cut like a remembered one. A run the log does not have (or lost) counts as cancelled.
   */
  const outcomeFromLog = (user_id: string, run_id: string): Effect.Effect<AgentOutcome> =>
    log === undefined ? Effect.succeed(cancelledOutcome) : Effect.gen(function*() {
      let summary = yield* log.summary(user_id, run_id)
      while (summary.status === "running") {
        yield* log.waitFor(user_id, run_id, summary.last_seq)
        summary = yield* log.summary(user_id, run_id)
      }
      const page = yield* log.read(user_id, run_id, Math.max(0, summary.last_seq - 2), { maxEvents: 2, maxBytes: 1 << 20 })
      let outcome: AgentOutcome = cancelledOutcome
      let error: AgentOutcome["error"]
      for (const { frame } of page.events) {
        const event = decodeServerFrame(frame)
        if (event?.type === "agent_error" && event.depth === 0) error = { code: event.error.code, message: event.error.message }
        if (event?.type === "agent_completed" && event.depth === 0) {
          const { duration_ms, final_response, status } = event
          outcome = { status, final_response, duration_ms, ...(error === undefined ? {} : { error }) }
        }
      }
      return small(outcome)
    }).pipe(Effect.orElseSucceed(() => cancelledOutcome))

  const start = (context: UserExecutionContext, agent_name: string | undefined, request: string, options?: StartOptions) =>
    Effect.gen(function*() {
      const resolved = yield* instances.resolve(agent_name)
      if (options?.threadGiven === true) yield* checkThread(context)
      // a hash, not the request: remembered requests cost the same whatever their size
      const idempotency = options?.idempotent === true
        ? { fingerprint: createHash("sha256").update(JSON.stringify([resolved, request])).digest("base64"), threadGiven: options.threadGiven === true }
        : undefined
      const admitted = yield* admission.admit(context, resolved, { idempotency, rateLimited: options?.rateLimited })
      if (admitted._tag === "Duplicate") {
        const { agent_name: original, request_id, run_id, thread_id } = admitted.run
        const info = { run_id, thread_id, request_id, agent_name: original, duplicate: true }
        if (options?.onAccepted !== undefined) yield* options.onAccepted(info)
        const running = active.get(run_id)
        const handle: RunHandle = {
          ...info,
          await: running !== undefined
            ? Deferred.await(running.done)
            : Effect.suspend(() => {
              const remembered = ended.get(run_id)?.outcome
              return remembered !== undefined ? Effect.succeed(remembered) : outcomeFromLog(context.user_id, run_id)
            })
        }
        return handle
      }
      if (active.has(context.run_id) || (yield* FiberMap.has(runs, context.run_id))) {
        yield* admitted.release
        return yield* Effect.die(new Error(`run ${context.run_id} is already running: every run needs a fresh run_id`))
      }
      const entry: ActiveRun = {
        context,
        agent_name: resolved,
        fiber: undefined,
        emitter: undefined,
        cause: undefined,
        done: Deferred.makeUnsafe<AgentOutcome>(),
        released: Deferred.makeUnsafe<void>(),
        deadline: nowMs() + runTimeoutMs,
        timedOut: false
      }
      active.set(context.run_id, entry)
      // a timer waiting for runs (none was running) starts timing this one
      wakeTimer?.()
      const info = { run_id: context.run_id, thread_id: context.thread_id, request_id: context.request_id, agent_name: resolved, duplicate: false }

      const body = Effect.gen(function*() {
        // a forked fiber may run before `FiberMap.run` returns it: stops from inside the run need it now
        yield* Effect.withFiber((fiber) => Effect.sync(() => {
          entry.fiber = fiber as Fiber.Fiber<AgentOutcome>
        }))
        if (options?.onAccepted !== undefined) yield* options.onAccepted(info)
        // the run's timeout is the engine's one timer (above)
        return yield* Effect.scoped(Effect.flatMap(createForUser(context), (engine) => {
          entry.emitter = engine.emitter
          if (entry.cause !== undefined) engine.emitter.setStopCause(entry.cause)
          // a run whose log is full is ended by its emitter, through the same stop as any other
          engine.emitter.onStopRequest((cause) => requestStop(entry, cause))
          // the slot is given back just before the root's agent_completed, so a client that starts its
          // next run on seeing that event does not meet this run's slot still taken (on Redis the release
          // is a round trip). At most RELEASE_BEFORE_END_MS of waiting (Redis paused): past it the
          // release goes on without holding the event back, and the slot expires by itself if it fails
          // (interruptible: the run's fiber is not, and the timeout must be able to end the wait)
          engine.emitter.beforeEnd(Effect.asVoid(Effect.timeoutOption(Effect.interruptible(admitted.release), RELEASE_BEFORE_END_MS)))
          return engine.run(resolved, request)
        }))
      }).pipe(
        // resolved above, so the agent exists; a registry that changed meanwhile is a defect
        Effect.orDie,
        Effect.onExit((exit) =>
          Effect.suspend(() => {
            const outcome = entry.emitter?.outcome() ?? (Exit.isSuccess(exit) ? exit.value : cancelledOutcome)
            active.delete(context.run_id)
            remember(entry, outcome)
            Deferred.doneUnsafe(entry.done, Effect.succeed(outcome))
            // idle once its slot is given back too (drain: nothing of the run is left)
            releasing++
            return Effect.ensuring(admitted.release, Effect.sync(() => {
              Deferred.doneUnsafe(entry.released, Exit.void)
              releasing--
              if (active.size === 0 && releasing === 0) for (const wake of Array.from(idleWaiters)) wake()
            }))
          })
        ),
        Effect.uninterruptible
      )
      const fiber = yield* FiberMap.run(runs, context.run_id, body)
      entry.fiber = fiber
      // a stop that arrived while the fiber was being forked
      if (entry.cause !== undefined && active.has(context.run_id)) fiber.interruptUnsafe()
      const handle: RunHandle = { ...info, await: Deferred.await(entry.done) }
      return handle
    })

  // a stop answers once each run ended and gave its slot back (on Redis a round trip or two after its end): a start
  // sent on the answer must not meet the stopped run's slot still taken
  const stopAll = (runsToStop: ReadonlyArray<ActiveRun>, cause: StopCause) =>
    Effect.suspend(() => {
      for (const run of runsToStop) requestStop(run, cause)
      return Effect.forEach(runsToStop, (run) => Effect.tap(Deferred.await(run.done), () => Deferred.await(run.released)))
    })

  // repeated until empty: a run forked while the previous round was stopping is stopped too
  const interruptAll: Effect.Effect<void> = Effect.suspend(() => {
    if (active.size === 0) return Effect.void
    return Effect.andThen(stopAll(Array.from(active.values()), "server_shutdown"), interruptAll)
  })

  /** Stops the selected runs executing here; the ids of those actually stopped. */
  const stopLocal = (selector: RunSelector): Effect.Effect<ReadonlyArray<string>> =>
    Effect.suspend(() => {
      const selected = Array.from(active.values()).filter((run) =>
        run.context.user_id === selector.user_id &&
        (selector.run_id === undefined || run.context.run_id === selector.run_id) &&
        (selector.thread_id === undefined || run.context.thread_id === selector.thread_id)
      )
      // stopped by this stop: its cancelled ending passed its emitter, so it is in the log (a run another
      // instance closed meanwhile, INSTANCE_LOST, has its ending refused as fenced: it had already ended)
      return Effect.map(stopAll(selected, "user_request"), (outcomes) =>
        selected.filter((run, i) =>
          run.cause === "user_request" && outcomes[i]!.status === "cancelled" && run.emitter?.outcome()?.status === "cancelled"
        ).map((run) => run.context.run_id))
    })

  const localState = (user_id: string, run_id: string): RunState => {
    const running = active.get(run_id)
    if (running !== undefined) return running.context.user_id === user_id ? "active" : "unknown"
    return ended.get(run_id)?.user_id === user_id ? "ended" : "unknown"
  }

  // other instances' stops of runs executing here
  if (control !== undefined) yield* control.serve(stopLocal)

  // this instance's lease expired (cut off from Redis or paused longer than the lease): another instance
  // may be closing its runs with INSTANCE_LOST; they end here too, so local sockets see them end
  const lease = Option.getOrUndefined(yield* Effect.serviceOption(InstanceLease))
  if (lease !== undefined) {
    yield* lease.onLost(() => {
      for (const run of Array.from(active.values())) requestStop(run, "instance_lost")
    })
  }

  return ExecutionEngineFactory.of({
    createForUser,
    start,
    stop: (selector) =>
      Effect.suspend(() => {
        // a run this instance runs (or ran) is stopped here alone: nothing to ask Redis or another instance
        if (control === undefined || (selector.run_id !== undefined && localState(selector.user_id, selector.run_id) !== "unknown")) {
          return stopLocal(selector)
        }
        // the runs here stop even when the other instances cannot be reached (the answer is then that error)
        return Effect.zip(stopLocal(selector), Effect.result(control.stopRemote(selector)), { concurrent: true }).pipe(
          Effect.flatMap(([here, elsewhere]) =>
            Result.isSuccess(elsewhere) ? Effect.succeed([...here, ...elsewhere.success]) : Effect.fail(elsewhere.failure)
          )
        )
      }),
    runState: (user_id, run_id) =>
      Effect.suspend(() => {
        const here = localState(user_id, run_id)
        if (here !== "unknown" || control === undefined) return Effect.succeed(here)
        return Effect.map(control.remoteRuns(user_id), (remote): RunState => remote.some((run) => run.run_id === run_id) ? "active" : "unknown")
      }),
    interrupt: (run_id) =>
      Effect.suspend(() => {
        const running = active.get(run_id)
        return running === undefined ? Effect.succeed(false) : Effect.as(stopAll([running], "user_request"), true)
      }),
    interruptAll,
    drain: (timeoutMs) =>
      Effect.callback<boolean>((resume) => {
        if (active.size === 0 && releasing === 0) return resume(Effect.succeed(true))
        const wake = () => {
          idleWaiters.delete(wake)
          resume(Effect.succeed(true))
        }
        idleWaiters.add(wake)
        return Effect.sync(() => idleWaiters.delete(wake))
      }).pipe(Effect.timeoutOption(timeoutMs), Effect.map(Option.getOrElse(() => false))),
    closeAdmission: admission.close,
    admissionOpen: admission.isOpen,
    activeRuns: Effect.sync(() => active.size),
    liveEngines: Effect.sync(() => liveEngines),
    forgetUser: (user_id) =>
      Effect.suspend(() => {
        for (const [run_id, run] of Array.from(ended)) if (run.user_id === user_id) ended.delete(run_id)
        return admission.forgetUser?.(user_id) ?? Effect.void
      })
  })
})

/** The factory. Requires the agent instance factory, the bridge and admission; reads the run timeout from `AgentwireConfig` when provided. */
export const layer: Layer.Layer<
  ExecutionEngineFactory,
  never,
  AgentInstanceFactory | WebSocketBridge | RunAdmission
> = Layer.effect(
  ExecutionEngineFactory,
  make
)
