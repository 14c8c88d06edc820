/**
 * `npm exec -- node bench/history-writes.ts [--runs=4000] [--per-turn=1]`: the
 * CPU one run's history costs the server (issue 9): two `recordRun`s (at start,
 * with the request; at end, with the answer), through the SQLite store as
 * `History.layerSqlite` builds it (buffered, writes of `BATCH_WINDOW_MS` in one
 * transaction, prepared statements), and the same with every write applied on
 * its own (`maxBatch` 1).
 *
 * `per-turn` runs are recorded per event-loop turn (the bench's paced load
 * starts and ends about one run per 3 ms). Prints process CPU µs per run
 * (user + system), a temp file per configuration. Asserts nothing.
 *
 * @module
 */
import { Context, Effect, Layer } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as History from "../src/layers/History.ts"
import { ConversationStore } from "../src/services/ConversationStore.ts"

const flag = (name: string, fallback: number) => {
  const arg = process.argv.find((a) => a.startsWith(`--${name}=`))
  return arg === undefined ? fallback : Number(arg.slice(name.length + 3))
}
const RUNS = flag("runs", 4000)
const PER_TURN = flag("per-turn", 1)

const measure = (label: string, options: History.HistoryLayerOptions) =>
  Effect.gen(function*() {
    const dir = mkdtempSync(join(tmpdir(), "agentwire-history-writes-"))
    try {
      yield* Effect.scoped(Effect.gen(function*() {
        const store = Context.get(yield* Layer.build(History.layerSqlite(dir, options)), ConversationStore)
        const cpu0 = process.cpuUsage()
        const t0 = performance.now()
        for (let i = 0; i < RUNS;) {
          for (let k = 0; k < PER_TURN && i < RUNS; k++, i++) {
            const run = { run_id: `run_${i}`, user_id: `u${i % 100}`, thread_id: `thread_${i}`, agent_name: "ticker", started_at: Date.now() }
            const request = "steps=40 interval_ms=5"
            yield* store.recordRun({ ...run, status: "running" }, { title: request, messages: [{ role: "user", content: request }] })
            yield* store.recordRun({ ...run, status: "completed", ended_at: Date.now(), final_response: "ticked 40 times" }, {
              title: request,
              messages: [{ role: "assistant", content: "ticked 40 times" }]
            })
          }
          yield* Effect.promise(() => new Promise<void>((resolve) => setImmediate(resolve)))
        }
        // the read waits for every queued write
        yield* store.listThreads("u0", { limit: 1 })
        const cpu = process.cpuUsage(cpu0)
        console.log(JSON.stringify({
          store: label,
          runs: RUNS,
          per_turn: PER_TURN,
          cpu_us_per_run: Math.round((cpu.user + cpu.system) / RUNS * 10) / 10,
          user_us_per_run: Math.round(cpu.user / RUNS * 10) / 10,
          system_us_per_run: Math.round(cpu.system / RUNS * 10) / 10,
          wall_ms: Math.round(performance.now() - t0)
        }))
      }))
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

await Effect.runPromise(Effect.gen(function*() {
  yield* measure("sqlite, as the server (batched)", {})
  yield* measure("sqlite, one write per transaction", { maxBatch: 1, batchWindowMs: 0 })
  yield* measure("sqlite, as the server (batched), again", {})
}))
