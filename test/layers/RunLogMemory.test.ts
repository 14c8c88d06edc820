/**
 * The in-memory run log (issue 10): appends, range reads, summaries, retention
 * and tombstones on the TestClock, the byte budget, the per-run event cap, and
 * `follow` (replay, then live, from any seq) as a property.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Stream } from "effect"
import { TestClock } from "effect/testing"
import * as fc from "fast-check"
import * as RunLogMemory from "../../src/layers/RunLogMemory.ts"
import type { AgentEvent } from "../../src/protocol/Protocol.ts"
import { follow, RunLog, type RunLogSettings } from "../../src/services/RunLog.ts"

const SETTINGS: RunLogSettings = { retentionMs: 60_000, maxEventsPerRun: 100, maxBytes: 1024 * 1024, maxBytesPerUser: 1024 * 1024, tombstoneMs: 3_600_000 }

const withLog = (settings: Partial<RunLogSettings> = {}) => Effect.provide(RunLogMemory.layer({ ...SETTINGS, ...settings }))

/** A stamped event of `run_id` at `seq` (depth 0); `end` makes it the root `agent_completed`. */
const event = (run_id: string, seq: number, options: { readonly user?: string; readonly end?: boolean; readonly pad?: number } = {}): AgentEvent => {
  const base = {
    event_id: `${run_id}:${seq}`,
    run_id,
    thread_id: `thread-${run_id}`,
    user_id: options.user ?? "alice",
    agent_name: "ticker",
    depth: 0,
    seq,
    timestamp: new Date(1_700_000_000_000 + seq).toISOString()
  }
  if (options.end === true) return { ...base, type: "agent_completed", status: "completed", final_response: "done", duration_ms: 1 }
  if (seq === 1) return { ...base, type: "agent_started", task_description: "t" }
  return { ...base, type: "agent_thinking", reasoning: "x".repeat(options.pad ?? 8) }
}

const append = (e: AgentEvent) => RunLog.use((log) => log.append(e, JSON.stringify(e)))

/** Appends a whole run of `n` events (the last one ends it unless `open`). */
const appendRun = (run_id: string, n: number, options: { readonly user?: string; readonly open?: boolean; readonly pad?: number } = {}) =>
  Effect.forEach(Array.from({ length: n }, (_, i) => i + 1), (seq) =>
    append(event(run_id, seq, { ...options, end: options.open !== true && seq === n })))

/** The bytes the log counts for a run appended by `appendRun`. */
const runBytes = (run_id: string, n: number, options: { readonly open?: boolean; readonly pad?: number } = {}) =>
  Array.from({ length: n }, (_, i) => i + 1).reduce(
    (sum, seq) =>
      sum + RunLogMemory.frameBytes(JSON.stringify(event(run_id, seq, { ...options, end: options.open !== true && seq === n }))) +
      RunLogMemory.EVENT_OVERHEAD_BYTES,
    RunLogMemory.RUN_OVERHEAD_BYTES
  )

const readAll = (user: string, run_id: string, after = 0) =>
  RunLog.use((log) => log.read(user, run_id, after, { maxEvents: 10_000, maxBytes: 1 << 30 }))

describe("RunLogMemory", () => {
  it.effect("reads a run from any seq, in order; summaries follow the run's events; another user's run is not found", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      yield* appendRun("r1", 5, { open: true })
      const page = yield* readAll("alice", "r1", 2)
      expect(page.events.map((e) => e.seq)).toEqual([3, 4, 5])
      expect(JSON.parse(page.events[0]!.frame).seq).toBe(3)
      expect(page.summary).toMatchObject({ run_id: "r1", status: "running", last_seq: 5, agent_name: "ticker" })
      yield* append(event("r1", 6, { end: true }))
      const summary = yield* log.summary("alice", "r1")
      expect(summary).toMatchObject({ status: "completed", last_seq: 6 })
      expect(summary.ended_at).toBeDefined()
      const foreign = yield* Effect.flip(log.summary("mallory", "r1"))
      expect(foreign._tag).toBe("RunNotFoundError")
      const unknown = yield* Effect.flip(log.summary("alice", "nope"))
      expect(unknown._tag).toBe("RunNotFoundError")
      const beyond = yield* Effect.flip(readAll("alice", "r1", 7))
      expect(beyond).toMatchObject({ _tag: "AfterSeqError", after_seq: 7, last_seq: 6 })
    }).pipe(withLog()))

  it.effect("pages are bounded by events and bytes, never empty while events remain", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      yield* appendRun("r1", 20, { pad: 1000 })
      const byCount = yield* log.read("alice", "r1", 0, { maxEvents: 7, maxBytes: 1 << 30 })
      expect(byCount.events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7])
      const byBytes = yield* log.read("alice", "r1", 1, { maxEvents: 100, maxBytes: 2500 })
      expect(byBytes.events.length).toBe(2)
      const tiny = yield* log.read("alice", "r1", 1, { maxEvents: 100, maxBytes: 1 })
      expect(tiny.events.map((e) => e.seq)).toEqual([2])
    }).pipe(withLog()))

  it.effect("list: the user's runs newest first, filtered by thread and status, bounded", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      yield* appendRun("a", 3)
      yield* appendRun("b", 2, { open: true })
      yield* appendRun("c", 2, { user: "bob" })
      expect((yield* log.list("alice")).map((r) => r.run_id)).toEqual(["b", "a"])
      expect((yield* log.list("alice", { status: "running" })).map((r) => r.run_id)).toEqual(["b"])
      expect((yield* log.list("alice", { thread_id: "thread-a" })).map((r) => r.run_id)).toEqual(["a"])
      expect((yield* log.list("alice", { limit: 1 })).map((r) => r.run_id)).toEqual(["b"])
      expect((yield* log.list("bob")).map((r) => r.run_id)).toEqual(["c"])
      expect(yield* log.list("nobody")).toEqual([])
    }).pipe(withLog()))

  it.effect("retention: a finished run expires retentionMs after its end, leaves a tombstone with last_seq, then is unknown", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      yield* appendRun("old", 4)
      yield* appendRun("live", 2, { open: true })
      yield* TestClock.adjust(59_999)
      expect((yield* log.summary("alice", "old")).last_seq).toBe(4)
      yield* TestClock.adjust(1)
      const expired = yield* Effect.flip(readAll("alice", "old"))
      expect(expired).toMatchObject({ _tag: "RunExpiredError", run_id: "old", last_seq: 4 })
      // another user learns nothing from the tombstone
      expect((yield* Effect.flip(log.summary("bob", "old")))._tag).toBe("RunNotFoundError")
      // an active run never expires
      yield* TestClock.adjust(10 * 60_000)
      expect((yield* log.summary("alice", "live")).status).toBe("running")
      expect((yield* log.list("alice")).map((r) => r.run_id)).toEqual(["live"])
      yield* TestClock.adjust(3_600_000)
      expect((yield* Effect.flip(log.summary("alice", "old")))._tag).toBe("RunNotFoundError")
    }).pipe(withLog()))

  it.effect("the sweep frees expired runs without anyone reading them", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      yield* appendRun("r", 3)
      const waiting = yield* Effect.forkChild(log.waitFor("alice", "r", 3))
      // an ended run does not wait
      expect(Exit.isSuccess(yield* Fiber.await(waiting))).toBe(true)
      yield* TestClock.adjust(61_000)
      // the sweep ran: the run is gone from the user's list (list sweeps too, so check the tombstone instead)
      expect((yield* Effect.flip(log.summary("alice", "r")))._tag).toBe("RunExpiredError")
    }).pipe(withLog()))

  it.effect("byte budget: the oldest finished runs are evicted first (tombstoned); active runs are kept, and a run alone over it is told log_full", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      // the budget holds all four runs but one byte: adding the fourth evicts exactly the oldest finished one
      yield* appendRun("first", 5, { pad: 1000 })
      yield* appendRun("second", 5, { pad: 1000 })
      yield* appendRun("active", 5, { pad: 1000, open: true })
      yield* TestClock.adjust(1)
      // this pushes over the budget: "first" (oldest finished) goes, "second" stays
      yield* appendRun("third", 3, { pad: 1000 })
      expect((yield* Effect.flip(log.summary("alice", "first")))._tag).toBe("RunExpiredError")
      expect((yield* log.summary("alice", "second")).last_seq).toBe(5)
      expect((yield* log.summary("alice", "active")).last_seq).toBe(5)
      // the active run keeps growing: finished runs go, then it is told to end
      const results: Array<string> = []
      for (let seq = 6; seq < 40; seq++) results.push(yield* append(event("active", seq, { pad: 1000 })))
      expect(results).toContain("log_full")
      expect(results.indexOf("log_full")).toBeGreaterThan(0)
      expect((yield* Effect.flip(log.summary("alice", "second")))._tag).toBe("RunExpiredError")
      expect((yield* Effect.flip(log.summary("alice", "third")))._tag).toBe("RunExpiredError")
      expect((yield* log.summary("alice", "active")).status).toBe("running")
    }).pipe(withLog({
      maxBytes: runBytes("first", 5, { pad: 1000 }) + runBytes("second", 5, { pad: 1000 }) + runBytes("active", 5, { pad: 1000, open: true }) +
        runBytes("third", 3, { pad: 1000 }) - 1
    })))

  it.effect("a user over their share loses their own oldest finished runs first; another user's run is untouched; their active run is told log_full", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      yield* appendRun("bob-run", 3, { user: "bob", pad: 1000 })
      yield* appendRun("alice-1", 5, { pad: 1000 })
      yield* appendRun("alice-2", 5, { pad: 1000 })
      yield* appendRun("alice-3", 5, { pad: 1000 })
      // alice's share holds about two of her runs: her first went, bob's is still there
      expect((yield* Effect.flip(log.summary("alice", "alice-1")))._tag).toBe("RunExpiredError")
      expect((yield* log.summary("alice", "alice-3")).last_seq).toBe(5)
      expect((yield* log.summary("bob", "bob-run")).last_seq).toBe(3)
      // an active run of alice's that outgrows her share alone is told to end; bob's run stays
      const results: Array<string> = []
      for (let seq = 1; seq <= 30; seq++) results.push(yield* append(event("alice-big", seq, { pad: 1000 })))
      expect(results).toContain("log_full")
      expect((yield* log.summary("bob", "bob-run")).last_seq).toBe(3)
    }).pipe(withLog({ maxBytesPerUser: 2 * runBytes("alice-1", 5, { pad: 1000 }) + 100 })))

  it.effect("a finished run being read is kept past its retention while its reader goes on, and expires once the reader stops", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      yield* appendRun("r", 10)
      yield* TestClock.adjust(SETTINGS.retentionMs - 1000)
      // a replay reads a first page just before the window ends
      yield* log.read("alice", "r", 0, { maxEvents: 3, maxBytes: 1 << 20 })
      yield* TestClock.adjust(2000)
      // past retention, but read within the grace: the next page still comes
      expect((yield* log.read("alice", "r", 3, { maxEvents: 3, maxBytes: 1 << 20 })).events.map((e) => e.seq)).toEqual([4, 5, 6])
      yield* TestClock.adjust(RunLogMemory.REPLAY_GRACE_MS)
      expect((yield* Effect.flip(log.summary("alice", "r")))._tag).toBe("RunExpiredError")
    }).pipe(withLog()))

  it.effect("event cap: past maxEventsPerRun less the reserve the run is told event_limit; past the cap itself events are refused", () =>
    Effect.gen(function*() {
      const results: Array<string> = []
      for (let seq = 1; seq <= 102; seq++) results.push(yield* append(event("big", seq)))
      const reserve = RunLogMemory.terminalReserve(100)
      expect(reserve).toBe(25)
      expect(results.slice(0, 75).every((r) => r === "ok")).toBe(true)
      expect(results.slice(75, 100).every((r) => r === "event_limit")).toBe(true)
      expect(results.slice(100)).toEqual(["refused", "refused"])
      expect((yield* readAll("alice", "big")).events.length).toBe(100)
    }).pipe(withLog()))

  it.effect("waitFor resumes on the next append, on the run's end, and fails when the run expires", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      yield* appendRun("r", 2, { open: true })
      const first = yield* Effect.forkChild(log.waitFor("alice", "r", 2))
      yield* Effect.yieldNow
      expect(first.pollUnsafe()).toBeUndefined()
      yield* append(event("r", 3))
      expect(Exit.isSuccess(yield* Fiber.await(first))).toBe(true)
      const second = yield* Effect.forkChild(log.waitFor("alice", "r", 3))
      yield* append(event("r", 4, { end: true }))
      expect(Exit.isSuccess(yield* Fiber.await(second))).toBe(true)
      const foreign = yield* Effect.flip(log.waitFor("bob", "r", 0))
      expect(foreign._tag).toBe("RunNotFoundError")
    }).pipe(withLog()))

  it("counts a frame with a character past U+00FF at two bytes per character, as V8 stores it", () => {
    expect(RunLogMemory.frameBytes("plain ascii and latin-1 é")).toBe(25)
    expect(RunLogMemory.frameBytes("“quoted”")).toBe(16)
    expect(RunLogMemory.frameBytes("emoji 🙂")).toBe(16)
  })
})

describe("follow", () => {
  it.effect("replays, marks where the replay caught up, then follows live appends until the run ends", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      yield* appendRun("r", 3, { open: true })
      const fiber = yield* Effect.forkChild(Stream.runCollect(follow(log, "alice", "r", 1)))
      yield* Effect.yieldNow
      yield* append(event("r", 4))
      yield* append(event("r", 5, { end: true }))
      const items = yield* Fiber.join(fiber)
      const shown = items.map((i) =>
        i._tag === "Event" ? i.event.seq : i._tag === "CaughtUp" ? `caught-up@${i.summary.last_seq}:${i.summary.status}` : "idle"
      )
      expect(shown).toEqual([2, 3, "caught-up@3:running", 4, 5])
    }).pipe(withLog()))

  it.effect("a run that ended: replay, then the marker with its final status, then the stream ends", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      yield* appendRun("r", 4)
      const items = yield* Stream.runCollect(follow(log, "alice", "r", 4))
      expect(items).toEqual([{ _tag: "CaughtUp", summary: expect.objectContaining({ last_seq: 4, status: "completed" }) }])
    }).pipe(withLog()))

  it.effect("a run that expires while followed (between two pages of its replay) fails the stream with RunExpiredError", () =>
    Effect.gen(function*() {
      const log = yield* RunLog
      yield* appendRun("r", 600)
      const seen: Array<number> = []
      const error = yield* Effect.flip(Stream.runForEach(follow(log, "alice", "r", 0), (item) =>
        item._tag === "Event" && item.event.seq === 1
          ? Effect.andThen(Effect.sync(() => seen.push(1)), TestClock.adjust(SETTINGS.retentionMs))
          : Effect.sync(() => item._tag === "Event" && seen.push(item.event.seq))))
      expect(error).toMatchObject({ _tag: "RunExpiredError", last_seq: 600 })
      // the first page went out whole, the second never came
      expect(seen.length).toBeGreaterThan(0)
      expect(seen.length).toBeLessThan(600)
    }).pipe(withLog({ maxEventsPerRun: 10_000 })))

  it.live("property: any interleaving of appends and pages gives after_seq+1..n exactly once, in order, with one marker", () =>
    Effect.promise(() =>
      fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 1, max: 600 }),
          fc.integer({ min: 0, max: 600 }),
          fc.array(fc.integer({ min: 0, max: 40 }), { minLength: 1, maxLength: 30 }),
          async (total, afterRaw, bursts) => {
            const program = Effect.gen(function*() {
              const log = yield* RunLog
              // some events exist before following starts
              const before = Math.max(1, Math.min(total, bursts[0]!))
              for (let seq = 1; seq <= before; seq++) yield* append(event("p", seq, { end: seq === total }))
              const after = Math.min(afterRaw, before)
              const fiber = yield* Effect.forkChild(Stream.runCollect(follow(log, "alice", "p", after)))
              let seq = before
              for (const burst of bursts.slice(1)) {
                for (let i = 0; i < burst && seq < total; i++) {
                  seq++
                  yield* append(event("p", seq, { end: seq === total }))
                }
                yield* Effect.yieldNow
              }
              while (seq < total) {
                seq++
                yield* append(event("p", seq, { end: seq === total }))
              }
              const items = yield* Fiber.join(fiber)
              const seqs = items.flatMap((i) => (i._tag === "Event" ? [i.event.seq] : []))
              expect(seqs).toEqual(Array.from({ length: total - after }, (_, i) => after + i + 1))
              expect(items.filter((i) => i._tag === "CaughtUp").length).toBe(1)
            })
            await Effect.runPromise(program.pipe(Effect.scoped, Effect.provide(RunLogMemory.layer({ ...SETTINGS, maxEventsPerRun: 10_000 }))))
          }
        ),
        // a failure prints its seed and path; keep such an input as a test above
        { numRuns: 200, verbose: 1 }
      )
    ), 60_000)
})

// the layer reads AgentwireConfig when provided
it.effect("layerConfig takes its settings from AgentwireConfig", () =>
  Effect.gen(function*() {
    const log = yield* RunLog
    expect(log.settings.maxEventsPerRun).toBe(100_000)
    expect(log.epoch).toMatch(/^epoch_/)
  }).pipe(Effect.provide(Layer.fresh(RunLogMemory.layerConfig))))
