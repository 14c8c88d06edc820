/**
 * `npm exec -- node bench/run-cost.ts --old=<checkout> [--rounds=12] [--runs=400] [--request=hello] [--agent=echo] [--history=1] [--prefill=0]`:
 * the CPU one run costs the runtime beyond its events (issue 9), A/B in one
 * process: the `src/` of `--old` (e.g. a `git archive` of the base commit) and
 * this checkout's, each built once (`AgentRuntime.layer`, the built-in agents,
 * run limits wide open, SQLite history in a temp dir as the server has it,
 * logs off), then rounds alternating old and new. A round starts `--runs` runs
 * at once the way a `start_agent` frame does (`UserExecutionContext.make`,
 * `start` with a client `request_id`, `run_accepted` encoded in `onAccepted`),
 * spread over 100 users with one registered connection each (its `send`
 * drops the frame), awaits them all, then waits for their history writes
 * (a read behind them). Prints process CPU µs per run (user + system) per
 * round, and the median and spread per side. `--prefill=N` makes N runs on
 * each side first (a history database that is not new). Asserts nothing.
 *
 * @module
 */
import { Context, Effect, Exit, Layer, References, Scope } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"

const flag = (name: string, fallback: string) => {
  const arg = process.argv.find((a) => a.startsWith(`--${name}=`))
  return arg === undefined ? fallback : arg.slice(name.length + 3)
}
const OLD = flag("old", "")
const ROUNDS = Number(flag("rounds", "12"))
const RUNS = Number(flag("runs", "400"))
const AGENT = flag("agent", "echo")
const REQUEST = flag("request", "hello")
const HISTORY = flag("history", "1") === "1"
/** Runs made on each side before the warm-up (a history database that is not empty). */
const PREFILL = Number(flag("prefill", "0"))
const USERS = 100

const cpuMicros = () => {
  const u = process.cpuUsage()
  return u.user + u.system
}

interface Side {
  readonly name: string
  readonly round: Effect.Effect<number>
}

/** The runtime of the checkout at `dir`, built into `scope`; a round of RUNS runs on it. */
const side = (name: string, dir: string, scope: Scope.Scope, dataDir: string) =>
  Effect.gen(function*() {
    const src = resolve(dir, "src")
    const AgentRuntime = yield* Effect.promise(() => import(join(src, "layers/AgentRuntime.ts")))
    const BuiltinAgents = yield* Effect.promise(() => import(join(src, "agents/BuiltinAgents.ts")))
    const Config = yield* Effect.promise(() => import(join(src, "layers/AgentwireConfig.ts")))
    const History = yield* Effect.promise(() => import(join(src, "layers/History.ts")))
    const Engines = yield* Effect.promise(() => import(join(src, "services/ExecutionEngineFactory.ts")))
    const Bridge = yield* Effect.promise(() => import(join(src, "services/WebSocketBridge.ts")))
    const Store = yield* Effect.promise(() => import(join(src, "services/ConversationStore.ts")))
    const UserExecutionContext = yield* Effect.promise(() => import(join(src, "services/UserExecutionContext.ts")))
    const limits = Config.layer({
      runLimits: { ...Config.DEFAULT_RUN_LIMITS, maxRunsPerUser: 1_000_000, maxRuns: 1_000_000, runStartsPerSecond: 0 }
    })
    const history = HISTORY ? History.layerSqlite(dataDir) : Layer.empty
    const runtime = AgentRuntime.layer.pipe(
      Layer.provide([BuiltinAgents.layer, limits]),
      Layer.provideMerge(history)
    )
    const context = yield* Layer.buildWithScope(runtime, scope)
    const engines = Context.get(context, Engines.ExecutionEngineFactory) as any
    const bridge = Context.get(context, Bridge.WebSocketBridge) as any
    const store = HISTORY ? Context.get(context, Store.ConversationStore) as any : undefined
    for (let u = 0; u < USERS; u++) {
      yield* Scope.provide(bridge.register({ id: `conn_${u}`, user_id: `u${u}`, send: () => {} }), scope) as unknown as Effect.Effect<void>
    }
    let n = 0
    const one = (i: number) =>
      Effect.gen(function*() {
        const ctx = yield* UserExecutionContext.make({ user_id: `u${i % USERS}`, request_id: `req_${name}_${++n}` })
        const handle = yield* engines.start(ctx, AGENT, REQUEST, {
          idempotent: true,
          threadGiven: false,
          rateLimited: true,
          onAccepted: (accepted: any) =>
            Effect.sync(() => void JSON.stringify({ type: "run_accepted", ...accepted }))
        })
        return handle
      }) as Effect.Effect<{ readonly await: Effect.Effect<unknown> }>
    const round = Effect.gen(function*() {
      const c0 = cpuMicros()
      const handles = []
      for (let i = 0; i < RUNS; i++) handles.push(yield* one(i))
      for (const h of handles) yield* h.await
      if (store !== undefined) yield* (store.listThreads("u0", { limit: 1 }) as Effect.Effect<unknown, unknown>).pipe(Effect.ignore)
      return (cpuMicros() - c0) / RUNS
    })
    return { name, round } satisfies Side
  })

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

const program = Effect.gen(function*() {
  const scope = yield* Scope.make()
  const dirs: Array<string> = []
  try {
    const sides: Array<Side> = []
    if (OLD !== "") {
      const d = mkdtempSync(join(tmpdir(), "agentwire-run-cost-"))
      dirs.push(d)
      sides.push(yield* side("old", OLD, scope, d))
    }
    const d = mkdtempSync(join(tmpdir(), "agentwire-run-cost-"))
    dirs.push(d)
    sides.push(yield* side("new", ".", scope, d))
    for (const s of sides) for (let i = 0; i < PREFILL / RUNS; i++) yield* s.round
    // warm-up
    for (const s of sides) for (let i = 0; i < 3; i++) yield* s.round
    const results = new Map<string, Array<number>>(sides.map((s) => [s.name, []]))
    for (let r = 0; r < ROUNDS; r++) {
      const order = r % 2 === 0 ? sides : [...sides].reverse()
      for (const s of order) results.get(s.name)!.push(yield* s.round)
    }
    for (const [name, xs] of results) {
      const s = [...xs].sort((a, b) => a - b)
      console.log(JSON.stringify({
        side: name,
        agent: AGENT,
        request: REQUEST,
        history: HISTORY,
        runs_per_round: RUNS,
        rounds: ROUNDS,
        cpu_us_per_run_median: Math.round(median(xs) * 10) / 10,
        p25: Math.round(s[Math.floor(s.length / 4)]! * 10) / 10,
        p75: Math.round(s[Math.floor(s.length * 3 / 4)]! * 10) / 10,
        min: Math.round(s[0]! * 10) / 10,
        max: Math.round(s.at(-1)! * 10) / 10
      }))
    }
  } finally {
    yield* Scope.close(scope, Exit.void)
    for (const d of dirs) rmSync(d, { recursive: true, force: true })
  }
}).pipe(Effect.provideService(References.MinimumLogLevel, "None"))

await Effect.runPromise(program as Effect.Effect<void, unknown>)
