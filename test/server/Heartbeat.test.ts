/** The heartbeat's judgement: only a socket with no progress at all, whose ping is overdue, is dead. */
import { describe, expect, it } from "@effect/vitest"
import * as Heartbeat from "../../src/server/Heartbeat.ts"

const base: Heartbeat.Observation = { at: 0, pong: false, bytesRead: 100, dispatched: 0, backlog: 0, handled: 0, pausedForInbox: false }
const INTERVAL = 500

const sweep = (state: Heartbeat.State | undefined, o: Partial<Heartbeat.Observation>) =>
  Heartbeat.judge(state, { ...base, ...o }, INTERVAL)

const alive = (v: Heartbeat.Verdict): Heartbeat.State => {
  if (v._tag !== "Alive") throw new Error("expected alive")
  return v.state
}

describe("Heartbeat.judge", () => {
  it("a silent socket with nothing in flight is dead one interval after its ping", () => {
    const first = sweep(undefined, { at: 0 })
    expect(first).toMatchObject({ _tag: "Alive", ping: true })
    expect(sweep(alive(first), { at: 501 })._tag).toBe("Dead")
  })

  it("an answered ping keeps it alive and sends the next one", () => {
    const s1 = alive(sweep(undefined, { at: 0 }))
    const v = sweep(s1, { at: 500, pong: true })
    expect(v).toMatchObject({ _tag: "Alive", ping: true })
  })

  it("a client reading 4 MiB out of the kernel's buffers is alive while its ping waits behind them (the review's slow reader)", () => {
    // 4 MiB were sent ahead of the ping: at 32 KiB/s that takes 128 s; Node sees no progress at all meanwhile
    const s1 = alive(sweep(undefined, { at: 0 }))
    const s2 = alive(sweep(s1, { at: 500, pong: true, dispatched: 4 * 1024 * 1024 }))
    let state = s2
    for (let t = 1000; t <= 120_000; t += 500) state = alive(sweep(state, { at: t, dispatched: 4 * 1024 * 1024 }))
    // past interval + 4 MiB / 32 KiB/s with still no pong: dead
    expect(sweep(state, { at: 500 + 500 + 128_000 + 1, dispatched: 4 * 1024 * 1024 })._tag).toBe("Dead")
  })

  it("bytes received, a userland backlog draining, or frames handled while the server paused reading are progress", () => {
    const s1 = alive(sweep(undefined, { at: 0, backlog: 1000 }))
    expect(sweep(s1, { at: 5000, bytesRead: 200, backlog: 1000 })._tag).toBe("Alive")
    expect(sweep(s1, { at: 5000, dispatched: 10, backlog: 990 })._tag).toBe("Alive")
    expect(sweep(s1, { at: 5000, handled: 3, pausedForInbox: true, backlog: 1000 })._tag).toBe("Alive")
    // handled frames without the server having paused reading are not the client's progress
    expect(sweep(s1, { at: 5000, handled: 3, backlog: 1000 })._tag).toBe("Dead")
  })

  it("progress does not send a second ping while one is outstanding", () => {
    const s1 = alive(sweep(undefined, { at: 0 }))
    expect(sweep(s1, { at: 500, bytesRead: 999 })).toMatchObject({ _tag: "Alive", ping: false })
  })
})
