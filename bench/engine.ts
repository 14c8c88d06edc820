/**
 * Engine overhead, in process: what one run costs the runtime when there is
 * no socket, on `AgentRuntime` with the built-in agents. Loops:
 *
 * - `alloc`: `Effect.scoped(createForUser(ctx))` with one context made up
 *   front: only allocating and releasing an engine (kept for comparison with
 *   earlier results);
 * - `run`: a fresh `UserExecutionContext.make`, then
 *   `Effect.scoped(createForUser(ctx) → engine.run("echo", …))`: create, run a
 *   trivial agent (`echo`: `agent_started`, one `agent_thinking`,
 *   `agent_completed`) to its terminal event, release. On a no-op bridge
 *   (`emit` does nothing: no encoding, no socket), logs off;
 * - `start`: `UserExecutionContext.make`, `factory.start(ctx, "echo", …)`,
 *   then `handle.await`: the path a `start_agent` frame takes (a forked run
 *   fiber in the factory's `FiberMap`), on the in-memory bridge with one
 *   registered connection of the user whose `send` drops the frame (so each
 *   event is encoded once, as in the server), logs off;
 * - `start+logs`: the same, with the server's logger (logfmt on stdout, which
 *   the bench sends to a file) at level info: the "run started" / "run ended"
 *   lines a production server writes.
 *
 * - `pacedRuns`: the paced workload's runs with no sockets (see `EngineResult`);
 * - `sleep`: the CPU cost of one timer wait, as a paced agent pays it between
 *   steps: F concurrent fibers each doing `Effect.sleep(5 ms)` S times, against
 *   F concurrent `setTimeout(5 ms)` chains of S (process CPU time / waits).
 *
 * Each run loop runs in batches until its time budget is spent, after a warm-up;
 * the reply is runs (or cycles) per second (wall clock) and CPU µs per run
 * (process CPU time, which other work on a shared machine does not inflate).
 *
 * argv: <budget ms per loop>
 *
 * @module
 */
import { tickerRun } from "./baseline-ticker.ts"
import { Effect, Layer, Logger, References } from "effect"
import * as BuiltinAgents from "../src/agents/BuiltinAgents.ts"
import * as AgentRuntime from "../src/layers/AgentRuntime.ts"
import * as AgentwireConfigLayer from "../src/layers/AgentwireConfig.ts"
import { ExecutionEngineFactory } from "../src/services/ExecutionEngineFactory.ts"
import * as UserExecutionContext from "../src/services/UserExecutionContext.ts"
import { WebSocketBridge } from "../src/services/WebSocketBridge.ts"

/** Run admission (issue 8) wide open, as in the bench's servers: these loops start runs back to back for one user. */
const unlimitedRuns = AgentwireConfigLayer.layer({
  runLimits: { ...AgentwireConfigLayer.DEFAULT_RUN_LIMITS, maxRunsPerUser: 1_000_000, maxRuns: 1_000_000, runStartsPerSecond: 0 }
})

export interface EngineLoop {
  /** Wall clock: cycles per second. */
  readonly perSecond: number
  /** Process CPU time (user + system) per cycle, µs: robust to other work on the machine, unlike `perSecond`. */
  readonly microsPerOp: number
  readonly iterations: number
}

export interface EngineResult {
  /** `createForUser` + release, one context made up front. */
  readonly alloc: EngineLoop
  /** `make` + `createForUser` + `engine.run("echo")` to `agent_completed` + release; no-op bridge, logs off. */
  readonly run: EngineLoop
  /** `make` + `start("echo")` + `await`; in-memory bridge, one connection that drops frames; logs off. */
  readonly start: EngineLoop
  /** As `start`, with the server's logfmt logger at level info. */
  readonly startWithLogs: EngineLoop
  /** CPU µs per timer wait: `Effect.sleep` in a fiber vs a bare `setTimeout` callback. */
  readonly sleep: {
    readonly effectSleepCpuMicros: number
    readonly setTimeoutCpuMicros: number
    readonly waits: number
    /** Fibers (or timer chains) waiting at a time. */
    readonly concurrent: number
  }
  /**
   * The paced workload's runs without sockets: PACED_RUNS concurrent `ticker` runs
   * (`steps=40 interval_ms=5`) started with `start` and awaited, each event encoded once
   * for one connection whose `send` drops it (logs off), against the baseline server's own
   * run loop (`setTimeout` pacing, stamp, one `JSON.stringify`, same drop); CPU µs per event.
   */
  readonly pacedRuns: {
    readonly agentwireCpuMicrosPerEvent: number
    readonly baselineCpuMicrosPerEvent: number
    readonly events: number
    readonly runs: number
  }
}

const budgetMs = Number(process.argv[2] ?? "1000")
/** The paced-runs measure is repeated (median of three) unless the budget is a smoke run's. */
const repeat = budgetMs >= 500

const cpuMicros = () => {
  const u = process.cpuUsage()
  return u.user + u.system
}
const BATCH = 200
const MAX_BATCHES = 100_000
const USER = "u1"

const measure = (cycle: Effect.Effect<unknown, unknown>, ms: number) =>
  Effect.gen(function*() {
    const batch = Effect.gen(function*() {
      for (let i = 0; i < BATCH; i++) yield* cycle
    })
    let n = 0
    const t0 = performance.now()
    const c0 = cpuMicros()
    for (let b = 0; b < MAX_BATCHES && performance.now() - t0 < ms; b++) {
      yield* batch
      n += BATCH
    }
    const elapsed = performance.now() - t0
    const loop: EngineLoop = { perSecond: n / (elapsed / 1000), microsPerOp: (cpuMicros() - c0) / n, iterations: n }
    return loop
  })

/** Warm-up at a quarter of the budget, then the measured loop. */
const timed = (cycle: Effect.Effect<unknown, unknown>) =>
  Effect.flatMap(measure(cycle, budgetMs / 4), () => measure(cycle, budgetMs))

const registry = BuiltinAgents.layer

/** A bridge that drops every event: the engine's own cost, nothing of encoding or sockets. */
const noopBridge = Layer.succeed(WebSocketBridge, {
  register: () => Effect.void,
  emit: () => Effect.void,
  connectionCount: () => Effect.succeed(0)
})

const allocAndRun = Effect.gen(function*() {
  const factory = yield* ExecutionEngineFactory
  const ctx = yield* UserExecutionContext.make({ user_id: USER })
  const alloc = yield* timed(Effect.scoped(factory.createForUser(ctx)))
  const run = yield* timed(
    Effect.scoped(
      Effect.gen(function*() {
        const context = yield* UserExecutionContext.make({ user_id: USER })
        const engine = yield* factory.createForUser(context)
        return yield* engine.run("echo", "hello")
      })
    )
  )
  return { alloc, run }
}).pipe(Effect.provide(AgentRuntime.layerWithoutBridge.pipe(Layer.provide([noopBridge, registry, unlimitedRuns]))))

const startAndAwait = Effect.gen(function*() {
  const factory = yield* ExecutionEngineFactory
  const bridge = yield* WebSocketBridge
  yield* bridge.register({ id: "conn_bench", user_id: USER, send: () => {} })
  return yield* timed(
    Effect.gen(function*() {
      const context = yield* UserExecutionContext.make({ user_id: USER })
      const handle = yield* factory.start(context, "echo", "hello")
      return yield* handle.await
    })
  )
}).pipe(Effect.scoped, Effect.provide(AgentRuntime.layer.pipe(Layer.provide([registry, unlimitedRuns]))))

/** Concurrent sleepers and paced runs: fewer in a smoke run. */
const SLEEPERS = repeat ? 1000 : 200
const SLEEPS = 20
const SLEEP_MS = 5

/** CPU µs per wait of SLEEPERS concurrent `setTimeout` chains of SLEEPS waits. */
const timeoutChains = () =>
  new Promise<number>((resolve) => {
    const c0 = cpuMicros()
    let live = SLEEPERS
    for (let f = 0; f < SLEEPERS; f++) {
      let left = SLEEPS
      const next = () => {
        if (--left > 0) setTimeout(next, SLEEP_MS)
        else if (--live === 0) resolve((cpuMicros() - c0) / (SLEEPERS * SLEEPS))
      }
      setTimeout(next, SLEEP_MS)
    }
  })

/** CPU µs per wait of SLEEPERS concurrent fibers each doing SLEEPS `Effect.sleep`s. */
const sleepingFibers = Effect.gen(function*() {
  const c0 = cpuMicros()
  const one = Effect.gen(function*() {
    for (let i = 0; i < SLEEPS; i++) yield* Effect.sleep(SLEEP_MS)
  })
  yield* Effect.forEach(Array.from({ length: SLEEPERS }), () => one, { concurrency: "unbounded", discard: true })
  return (cpuMicros() - c0) / (SLEEPERS * SLEEPS)
})

const sleeps = Effect.gen(function*() {
  // warm-up once each, then the median of three
  yield* Effect.promise(timeoutChains)
  yield* sleepingFibers
  const t: Array<number> = []
  const e: Array<number> = []
  for (let i = 0; i < 3; i++) {
    t.push(yield* Effect.promise(timeoutChains))
    e.push(yield* sleepingFibers)
  }
  const mid = (xs: Array<number>) => xs.sort((a, b) => a - b)[1]!
  return { effectSleepCpuMicros: mid(e), setTimeoutCpuMicros: mid(t), waits: SLEEPERS * SLEEPS, concurrent: SLEEPERS }
})

const PACED_RUNS = repeat ? 1000 : 200
const PACED_STEPS = 40
const PACED_INTERVAL_MS = 5
const PACED_EVENTS = PACED_RUNS * (PACED_STEPS + 2)

/** agentwire: PACED_RUNS ticker runs at once through `start`, awaited; CPU µs per event. */
const agentwirePaced = Effect.gen(function*() {
  const factory = yield* ExecutionEngineFactory
  const bridge = yield* WebSocketBridge
  yield* bridge.register({ id: "conn_bench", user_id: USER, send: () => {} })
  const once = Effect.gen(function*() {
    const c0 = cpuMicros()
    const handles = []
    for (let i = 0; i < PACED_RUNS; i++) {
      const context = yield* UserExecutionContext.make({ user_id: USER })
      handles.push(yield* factory.start(context, "ticker", `steps=${PACED_STEPS} interval_ms=${PACED_INTERVAL_MS}`))
    }
    for (const handle of handles) yield* handle.await
    return (cpuMicros() - c0) / PACED_EVENTS
  })
  yield* once
  if (!repeat) return yield* once
  const xs = [yield* once, yield* once, yield* once]
  return xs.sort((a, b) => a - b)[1]!
}).pipe(Effect.scoped, Effect.provide(AgentRuntime.layer.pipe(Layer.provide([registry, unlimitedRuns]))))

/** The baseline server's run loop (bench/baseline-server.ts `tick`), delivering to one socket that drops frames. */
const baselinePacedOnce = () =>
  new Promise<number>((resolve) => {
    const c0 = cpuMicros()
    let live = PACED_RUNS
    const send = (_frame: string) => {}
    const deliver = (event: object) => send(JSON.stringify(event))
    for (let r = 0; r < PACED_RUNS; r++) {
      tickerRun(USER, `steps=${PACED_STEPS} interval_ms=${PACED_INTERVAL_MS}`, undefined, deliver, () => {
        if (--live === 0) resolve((cpuMicros() - c0) / PACED_EVENTS)
      })
    }
  })

const baselinePaced = Effect.promise(async () => {
  await baselinePacedOnce()
  if (!repeat) return baselinePacedOnce()
  const xs = [await baselinePacedOnce(), await baselinePacedOnce(), await baselinePacedOnce()]
  return xs.sort((a, b) => a - b)[1]!
})

const program = Effect.gen(function*() {
  const { alloc, run } = yield* allocAndRun.pipe(Effect.provideService(References.MinimumLogLevel, "None"))
  const start = yield* startAndAwait.pipe(Effect.provideService(References.MinimumLogLevel, "None"))
  const startWithLogs = yield* startAndAwait.pipe(
    Effect.provideService(References.MinimumLogLevel, "Info"),
    Effect.provide(Logger.layer([Logger.consoleLogFmt]))
  )
  const sleep = yield* sleeps
  const agentwireCpuMicrosPerEvent = yield* agentwirePaced.pipe(Effect.provideService(References.MinimumLogLevel, "None"))
  const baselineCpuMicrosPerEvent = yield* baselinePaced
  const pacedRuns = { agentwireCpuMicrosPerEvent, baselineCpuMicrosPerEvent, events: PACED_EVENTS, runs: PACED_RUNS }
  const result: EngineResult = { alloc, run, start, startWithLogs, sleep, pacedRuns }
  return result
})

Effect.runPromise(program).then(
  (result) => {
    process.send?.({ id: 0, ...result })
    if (process.send === undefined) process.stderr.write(`${JSON.stringify(result, null, 2)}\n`)
    process.exit(0)
  },
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)
