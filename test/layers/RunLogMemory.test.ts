/**
 * The in-memory run log (issue 10): the shared behaviour suite
 * (`test/fixtures/runlog-suite.ts`, also run against Redis), plus what needs
 * the TestClock: retention and tombstones, the sweep, expiry while followed.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Stream } from "effect"
import { TestClock } from "effect/testing"
import * as RunLogMemory from "../../src/layers/RunLogMemory.ts"
import { follow, RunLog, type RunLogSettings } from "../../src/services/RunLog.ts"
import { append, appendRun, event, readAll, runLogSuite, SETTINGS } from "../fixtures/runlog-suite.ts"

const withLog = (settings: Partial<RunLogSettings> = {}) => Effect.provide(RunLogMemory.layer({ ...SETTINGS, ...settings }))

describe("RunLog behaviour (memory)", () => {
  runLogSuite({
    name: "memory",
    layer: RunLogMemory.layer,
    frameBytes: (frame) => RunLogMemory.frameBytes(frame) + RunLogMemory.EVENT_OVERHEAD_BYTES,
    runOverhead: RunLogMemory.RUN_OVERHEAD_BYTES,
    followRuns: 200
  })
})

/** The bytes the in-memory log counts for a run appended by `appendRun`. */
const runBytes = (run_id: string, n: number, options: { readonly open?: boolean; readonly pad?: number } = {}) =>
  Array.from({ length: n }, (_, i) => i + 1).reduce(
    (sum, seq) =>
      sum + RunLogMemory.frameBytes(JSON.stringify(event(run_id, seq, { ...options, end: options.open !== true && seq === n }))) +
      RunLogMemory.EVENT_OVERHEAD_BYTES,
    RunLogMemory.RUN_OVERHEAD_BYTES
  )

describe("RunLogMemory", () => {
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

  it("counts a frame with a character past U+00FF at two bytes per character, as V8 stores it", () => {
    expect(RunLogMemory.frameBytes("plain ascii and latin-1 é")).toBe(25)
    expect(RunLogMemory.frameBytes("“quoted”")).toBe(16)
    expect(RunLogMemory.frameBytes("emoji 🙂")).toBe(16)
  })

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
})

// the layer reads AgentwireConfig when provided
it.effect("layerConfig takes its settings from AgentwireConfig", () =>
  Effect.gen(function*() {
    const log = yield* RunLog
    expect(log.settings.maxEventsPerRun).toBe(100_000)
    expect(log.epoch).toMatch(/^epoch_/)
  }).pipe(Effect.provide(Layer.fresh(RunLogMemory.layerConfig))))
