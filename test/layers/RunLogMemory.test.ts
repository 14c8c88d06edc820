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
    followRuns: 200,
    time: { elapse: (ms) => TestClock.adjust(ms), retentionMs: SETTINGS.retentionMs, replayGraceMs: RunLogMemory.REPLAY_GRACE_MS }
  })
})

describe("RunLogMemory", () => {
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
