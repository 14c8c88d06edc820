/** One timer for many deadlines: a property against a plain list of deadlines, driven by a fake clock. */
import { describe, expect, it } from "@effect/vitest"
import * as fc from "fast-check"
import { type Clock, Deadlines, type Item, MAX_TIMER_MS } from "../../src/server/Deadlines.ts"

/** A clock whose time moves only when the test says; at most one timer exists at a time (checked). */
const fakeClock = () => {
  let now = 0
  let timer: { at: number; callback: () => void; id: number } | undefined
  let ids = 0
  let armed = 0
  const clock: Clock = {
    now: () => now,
    setTimer: (callback, ms) => {
      if (timer !== undefined) throw new Error("a second timer was armed while one was pending")
      armed++
      timer = { at: now + ms, callback, id: ++ids }
      return timer.id
    },
    clearTimer: (id) => {
      if (timer?.id === id) timer = undefined
    }
  }
  /** Moves the clock to `to`, firing the timer whenever it is due (as Node would, in order). */
  const advance = (to: number) => {
    while (timer !== undefined && timer.at <= to) {
      const t = timer
      timer = undefined
      now = Math.max(now, t.at)
      t.callback()
    }
    now = to
  }
  return { clock, advance, pending: () => timer, armed: () => armed }
}

interface Entry extends Item {
  readonly name: number
}
const entry = (name: number): Entry => ({ name, deadline: 0, slot: -1 })

describe("Deadlines", () => {
  it("fires each item once its deadline is reached, earliest first, with one timer; cancel and re-schedule", () => {
    const c = fakeClock()
    const fired: Array<[number, number]> = []
    const q = new Deadlines<Entry>((e) => void fired.push([e.name, c.clock.now()]), c.clock)
    const [a, b, d] = [entry(1), entry(2), entry(3)]
    q.schedule(a, 300)
    q.schedule(b, 100)
    q.schedule(d, 200)
    q.cancel(d)
    q.schedule(a, 50)
    expect(q.size).toBe(2)
    c.advance(49)
    expect(fired).toEqual([])
    c.advance(1000)
    expect(fired).toEqual([[1, 50], [2, 100]])
    expect(q.size).toBe(0)
    expect(c.pending()).toBeUndefined()
  })

  it("a deadline past the longest timer is reached in several timers", () => {
    const c = fakeClock()
    const fired: Array<number> = []
    const q = new Deadlines<Entry>(() => void fired.push(c.clock.now()), c.clock)
    q.schedule(entry(1), 3 * MAX_TIMER_MS)
    c.advance(3 * MAX_TIMER_MS - 1)
    expect(fired).toEqual([])
    c.advance(3 * MAX_TIMER_MS)
    expect(fired).toEqual([3 * MAX_TIMER_MS])
    expect(c.armed()).toBe(3)
  })

  it("an item re-scheduled by its own firing fires again at its new deadline", () => {
    const c = fakeClock()
    const times: Array<number> = []
    const q = new Deadlines<Entry>((e) => {
      times.push(c.clock.now())
      if (times.length < 3) q.schedule(e, c.clock.now() + 10)
    }, c.clock)
    q.schedule(entry(1), 10)
    c.advance(100)
    expect(times).toEqual([10, 20, 30])
  })

  it("property: fires exactly the items a plain list says are due, at their deadlines, in deadline order", () => {
    const op = fc.oneof(
      fc.record({ op: fc.constant("schedule" as const), item: fc.nat(15), at: fc.nat(1000) }),
      fc.record({ op: fc.constant("cancel" as const), item: fc.nat(15) }),
      fc.record({ op: fc.constant("advance" as const), by: fc.nat(200) })
    )
    fc.assert(
      fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
        const c = fakeClock()
        const fired: Array<{ name: number; at: number; deadline: number }> = []
        const q = new Deadlines<Entry>((e) => void fired.push({ name: e.name, at: c.clock.now(), deadline: e.deadline }), c.clock)
        const items = Array.from({ length: 16 }, (_, i) => entry(i))
        // the model: each item's pending deadline
        const model = new Map<number, number>()
        let now = 0
        const expected: Array<{ name: number; at: number; deadline: number }> = []
        for (const o of ops) {
          if (o.op === "schedule") {
            const deadline = now + o.at
            q.schedule(items[o.item]!, deadline)
            model.set(o.item, deadline)
          } else if (o.op === "cancel") {
            q.cancel(items[o.item]!)
            model.delete(o.item)
          } else {
            const to = now + o.by
            const due = [...model].filter(([, d]) => d <= to).sort((x, y) => x[1] - y[1])
            for (const [name, d] of due) {
              expected.push({ name, at: d, deadline: d })
              model.delete(name)
            }
            c.advance(to)
            now = to
          }
          expect(q.size).toBe(model.size)
          for (const [name] of model) expect(items[name]!.slot).toBeGreaterThanOrEqual(0)
        }
        // the fake timer fires at the earliest deadline, so every item fires exactly at its own
        // in deadline order (ties in any order)
        expect(fired.map((f) => f.at)).toEqual(expected.map((f) => f.at))
        expect(fired.every((f) => f.at === f.deadline)).toBe(true)
        expect(new Set(fired.map((f) => `${f.at}:${f.name}`))).toEqual(new Set(expected.map((f) => `${f.at}:${f.name}`)))
        if (model.size === 0) expect(c.pending()).toBeUndefined()
      }),
      // a failure prints its seed and path; keep such an input as a test above
      { numRuns: 500, verbose: 1 }
    )
  })
})
