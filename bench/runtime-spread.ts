/**
 * The paced workload's runs with no sockets, started the way the bench's load
 * generator starts them: R `ticker` runs (`steps=40 interval_ms=5`) at an even
 * rate over a window, each event encoded once and handed to C connections
 * whose `send` drops the frame; logs off. The same for the baseline server's
 * own run loop (`setTimeout` pacing, stamp, one `JSON.stringify`, the same C
 * no-op sends). Prints process CPU µs per event for each of four rounds (the
 * first ones warm the JIT up). Not part of `npm run bench`: a tool for
 * separating the runtime's cost from the socket's.
 *
 * `npm exec -- node bench/runtime-spread.ts [spread ms, default 3000] [connections, default 4]`
 *
 * With spread 0 every run starts at once, so their timers fire together
 * (what `bench/engine.ts`'s "paced runs without sockets" does).
 *
 * @module
 */
import { tickerRun } from "./baseline-ticker.ts"
import { Effect, Layer, References } from "effect"
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

const RUNS = 1000
const STEPS = 40
const INTERVAL_MS = 5
const EVENTS = RUNS * (STEPS + 2)
const ROUNDS = 4
const spreadMs = Number(process.argv[2] ?? "3000")
const connections = Number(process.argv[3] ?? "4")
const USER = "u1"

const cpuMicros = () => {
  const u = process.cpuUsage()
  return u.user + u.system
}

const agentwire = Effect.gen(function*() {
  const factory = yield* ExecutionEngineFactory
  const bridge = yield* WebSocketBridge
  for (let c = 0; c < connections; c++) yield* bridge.register({ id: `conn_${c}`, user_id: USER, send: () => {} })
  const out: Array<number> = []
  for (let round = 0; round < ROUNDS; round++) {
    const c0 = cpuMicros()
    const t0 = performance.now()
    const handles = []
    for (let i = 0; i < RUNS; i++) {
      const wait = t0 + (i * spreadMs) / RUNS - performance.now()
      if (wait >= 1) yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, wait)))
      const context = yield* UserExecutionContext.make({ user_id: USER })
      handles.push(yield* factory.start(context, "ticker", `steps=${STEPS} interval_ms=${INTERVAL_MS}`))
    }
    for (const handle of handles) yield* handle.await
    out.push((cpuMicros() - c0) / EVENTS)
  }
  return out
}).pipe(
  Effect.scoped,
  Effect.provide(AgentRuntime.layer.pipe(Layer.provide([BuiltinAgents.layer, unlimitedRuns]))),
  Effect.provideService(References.MinimumLogLevel, "None")
)

/** One round of the baseline server's run loop (bench/baseline-server.ts `tick`), same start schedule. */
const baselineRound = () =>
  new Promise<number>((resolve) => {
    const c0 = cpuMicros()
    const t0 = performance.now()
    const sends = Array.from({ length: connections }, () => (_frame: string) => {})
    const deliver = (event: object) => {
      const frame = JSON.stringify(event)
      for (let i = 0; i < sends.length; i++) sends[i]!(frame)
    }
    let live = RUNS
    const run = () =>
      tickerRun(USER, `steps=${STEPS} interval_ms=${INTERVAL_MS}`, undefined, deliver, () => {
        if (--live === 0) resolve((cpuMicros() - c0) / EVENTS)
      })
    let started = 0
    const tick = () => {
      const due = spreadMs === 0 ? RUNS : Math.min(RUNS, Math.floor(((performance.now() - t0) / spreadMs) * RUNS) + 1)
      while (started < due) {
        started++
        run()
      }
      if (started < RUNS) setTimeout(tick, 1)
    }
    tick()
  })

const main = async () => {
  const baseline: Array<number> = []
  for (let round = 0; round < ROUNDS; round++) baseline.push(await baselineRound())
  const ours = await Effect.runPromise(agentwire)
  const f = (xs: Array<number>) => xs.map((x) => x.toFixed(2)).join(", ")
  process.stdout.write(
    `${RUNS} ticker runs × ${STEPS} steps ${INTERVAL_MS} ms apart, started over ${spreadMs} ms, ${connections} no-op connections; ` +
      `CPU µs per event, rounds 1-${ROUNDS}:\n  baseline run loop: ${f(baseline)}\n  agentwire runtime: ${f(ours)}\n`
  )
}

main()
