// CPU per run of recording history (2 records per run) through the buffered SQLite store, in batches of `per` runs queued together
import { Effect } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as History from "../src/layers/History.ts"
import { ConversationStore } from "../src/services/ConversationStore.ts"

const per = Number(process.argv[2] ?? "1")
const maxBatch = Number(process.argv[3] ?? "32")
const RUNS = Number(process.env.RUNS ?? "4000")
const dir = mkdtempSync(join(tmpdir(), "histcost-"))
const program = Effect.gen(function*() {
  const store = yield* ConversationStore
  const user_id = "u"
  let i = 0
  const c0 = process.cpuUsage()
  const t0 = performance.now()
  while (i < RUNS) {
    for (let k = 0; k < per && i < RUNS; k++, i++) {
      const run = { run_id: `run-${i}`, user_id: `u${i % 100}`, thread_id: `thread-${i}`, agent_name: "ticker", started_at: Date.now() }
      yield* store.recordRun({ ...run, status: "running" }, { title: `steps=40 interval_ms=5`, messages: [{ role: "user", content: "steps=40 interval_ms=5" }] })
      yield* store.recordRun({ ...run, status: "completed", ended_at: Date.now(), final_response: "ticked 40 times" }, { title: "steps=40", messages: [{ role: "assistant", content: "ticked 40 times" }] })
    }
    yield* Effect.yieldNow
    yield* Effect.yieldNow
  }
  yield* store.listThreads(user_id, { limit: 1 })
  const c = process.cpuUsage(c0)
  console.log(`per=${per} maxBatch=${maxBatch}: ${((c.user + c.system) / RUNS).toFixed(1)} µs CPU per run (user ${(c.user / RUNS).toFixed(1)}, sys ${(c.system / RUNS).toFixed(1)}), wall ${((performance.now() - t0) * 1000 / RUNS).toFixed(1)} µs per run`)
})
await Effect.runPromise(program.pipe(Effect.provide(History.layerSqlite(dir, { maxBatch }))))
rmSync(dir, { recursive: true, force: true })
