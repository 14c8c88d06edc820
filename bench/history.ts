/**
 * `npm exec -- node bench/history.ts [--threads=1000] [--reps=20]`: the time to
 * list one user's threads (issue 14), on the in-memory store and on SQLite (a
 * temp file, through the buffered store as the server uses it), plus
 * PostgreSQL when `AGENTWIRE_DATABASE_URL` is set.
 *
 * Seeds `threads` threads (each: one run recorded at start and at end, with a
 * request and an answer), then measures (median and p95 of `reps`):
 * - one page of 100 (`listThreads(limit 100)`, what `list_threads` does);
 * - all threads, paging 100 at a time with `next` (10 pages for 1,000);
 * - one `getThread` (2 messages, 1 run).
 * Prints one JSON line per store. Asserts nothing about speed.
 *
 * @module
 */
import { Effect, Option, Redacted } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as ConversationStoreMemory from "../src/layers/ConversationStoreMemory.ts"
import * as History from "../src/layers/History.ts"
import { ConversationStore } from "../src/services/ConversationStore.ts"

const flag = (name: string, fallback: number) => {
  const arg = process.argv.find((a) => a.startsWith(`--${name}=`))
  return arg === undefined ? fallback : Number(arg.slice(name.length + 3))
}
const THREADS = flag("threads", 1000)
const REPS = flag("reps", 20)

const quantile = (xs: ReadonlyArray<number>, q: number) => {
  const sorted = [...xs].sort((a, b) => a - b)
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! * 1000) / 1000
}

const measure = (name: string, store: ConversationStore["Service"]) =>
  Effect.gen(function*() {
    const user_id = "bench-user"
    const seedStart = performance.now()
    for (let i = 0; i < THREADS; i++) {
      const thread_id = `thread-${i}`
      const run = { run_id: `run-${i}`, user_id, thread_id, agent_name: "assistant", started_at: Date.now() }
      yield* store.recordRun({ ...run, status: "running" }, { title: `question ${i}` })
      yield* store.recordRun({ ...run, status: "completed", ended_at: Date.now(), final_response: `answer ${i}` }, {
        title: `question ${i}`,
        messages: [{ role: "user", content: `question ${i}` }, { role: "assistant", content: `answer ${i}` }]
      })
    }
    // the first read waits until every queued write is applied
    yield* store.listThreads(user_id, { limit: 1 })
    const seedMs = performance.now() - seedStart
    const page: Array<number> = []
    const all: Array<number> = []
    const one: Array<number> = []
    for (let r = 0; r < REPS; r++) {
      let t = performance.now()
      yield* store.listThreads(user_id, { limit: 100 })
      page.push(performance.now() - t)
      t = performance.now()
      let seen = 0
      let next = yield* store.listThreads(user_id, { limit: 100 })
      seen += next.threads.length
      while (next.next !== undefined) {
        next = yield* store.listThreads(user_id, { limit: 100, before: next.next })
        seen += next.threads.length
      }
      all.push(performance.now() - t)
      if (seen !== THREADS) throw new Error(`listed ${seen} of ${THREADS}`)
      t = performance.now()
      const thread = yield* store.getThread({ user_id, thread_id: `thread-${r}` })
      one.push(performance.now() - t)
      if (Option.isNone(thread)) throw new Error("thread missing")
    }
    console.log(JSON.stringify({
      store: name,
      threads: THREADS,
      reps: REPS,
      seed_ms: Math.round(seedMs),
      page_of_100_ms: { median: quantile(page, 0.5), p95: quantile(page, 0.95) },
      [`all_${THREADS}_in_pages_of_100_ms`]: { median: quantile(all, 0.5), p95: quantile(all, 0.95) },
      get_thread_ms: { median: quantile(one, 0.5), p95: quantile(one, 0.95) }
    }))
  })

const dir = mkdtempSync(join(tmpdir(), "agentwire-bench-history-"))
const program = Effect.gen(function*() {
  yield* measure("memory", yield* ConversationStoreMemory.make())
  yield* Effect.flatMap(ConversationStore, (store) => measure("sqlite", store)).pipe(Effect.provide(History.layerSqlite(dir)))
  const url = process.env.AGENTWIRE_DATABASE_URL
  if (url !== undefined && url !== "") {
    yield* Effect.flatMap(ConversationStore, (store) => measure("postgres", store)).pipe(Effect.provide(History.layerPostgres(Redacted.make(url))))
  }
})

Effect.runPromise(program).finally(() => rmSync(dir, { recursive: true, force: true })).catch((error) => {
  console.error(error)
  process.exit(1)
})
