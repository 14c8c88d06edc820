import { describe, expect, it } from "@effect/vitest"
import { Clock, Deferred, Effect } from "effect"
import { TestClock } from "effect/testing"
import * as DeltaCoalescer from "../../src/llm/DeltaCoalescer.ts"

/** A coalescer whose sends are recorded with their time; `sent(n)` waits for the nth send. */
const recording = (intervalMs: number) =>
  Effect.gen(function*() {
    const sends: Array<{ text: string; at: number }> = []
    const waiting: Array<{ n: number; done: Deferred.Deferred<void> }> = []
    const coalescer = yield* DeltaCoalescer.make(intervalMs, (text) =>
      Effect.gen(function*() {
        sends.push({ text, at: yield* Clock.currentTimeMillis })
        for (const w of waiting) if (sends.length >= w.n) yield* Deferred.succeed(w.done, undefined)
      }))
    const sent = (n: number) =>
      Effect.gen(function*() {
        if (sends.length >= n) return
        const done = yield* Deferred.make<void>()
        waiting.push({ n, done })
        yield* Deferred.await(done)
      })
    return { coalescer, sends, sent }
  })

describe("DeltaCoalescer", () => {
  // on the TestClock: under load, real time between two pushes can exceed the interval (CI saw
  // "b" sent at once after a stall), so the test sets the time itself
  it.effect("sends the first delta at once, buffers the next ones, sends them together after the interval", () =>
    Effect.gen(function*() {
      const { coalescer, sends, sent } = yield* recording(50)
      yield* coalescer.push("a")
      expect(sends.map((s) => s.text)).toEqual(["a"])
      yield* TestClock.adjust("30 millis")
      yield* coalescer.push("b")
      yield* coalescer.push("")
      yield* coalescer.push("c")
      expect(sends).toHaveLength(1)
      yield* TestClock.adjust("19 millis")
      expect(sends).toHaveLength(1)
      yield* TestClock.adjust("1 millis")
      yield* sent(2)
      expect(sends).toEqual([{ text: "a", at: 0 }, { text: "bc", at: 50 }])
      yield* coalescer.flush
      expect(sends).toHaveLength(2)
      // a delta after a quiet interval goes out at once again (leading edge)
      yield* TestClock.adjust("60 millis")
      yield* coalescer.push("d")
      expect(sends.map((s) => s.text)).toEqual(["a", "bc", "d"])
    }).pipe(Effect.scoped))

  it.live("flush sends what is buffered at once and cancels the timer", () =>
    Effect.gen(function*() {
      const { coalescer, sends } = yield* recording(10_000)
      yield* coalescer.push("x")
      yield* coalescer.push("y")
      yield* coalescer.push("z")
      yield* coalescer.flush
      expect(sends.map((s) => s.text)).toEqual(["x", "yz"])
      yield* coalescer.flush
      expect(sends).toHaveLength(2)
    }).pipe(Effect.scoped))

  it.live("interval 0 sends every non-empty delta as it comes", () =>
    Effect.gen(function*() {
      const { coalescer, sends } = yield* recording(0)
      for (const d of ["1", "", "2", "3"]) yield* coalescer.push(d)
      expect(sends.map((s) => s.text)).toEqual(["1", "2", "3"])
    }).pipe(Effect.scoped))
})
