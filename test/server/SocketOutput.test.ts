/** The one write path per socket: bounds, process budget, corking, draining. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { EventEmitter } from "node:events"
import WebSocket from "ws"
import * as SocketOutput from "../../src/server/SocketOutput.ts"
import { AgentwireServer } from "../../src/services/AgentwireServer.ts"
import { Auth } from "../../src/services/Auth.ts"
import { connect } from "../fixtures/client.ts"
import * as TestServer from "../fixtures/testServer.ts"

const KiB = 1024

/** A `ws` stand-in whose unsent bytes grow with every frame until `drain` is called. */
const fakeWs = (readyState = 1) => {
  const sent: Array<string> = []
  const closes: Array<[number, string]> = []
  let terminated = 0
  const ws = {
    readyState,
    bufferedAmount: 0,
    send: (frame: string) => {
      sent.push(frame)
      ws.bufferedAmount += Buffer.byteLength(frame)
    },
    close: (code: number, reason: string) => void closes.push([code, reason]),
    terminate: () => {
      terminated++
      ws.readyState = 3
    }
  }
  return { ws, sent, closes, terminated: () => terminated }
}

/** A TCP socket stand-in: records cork calls; `writableLength` follows the ws fake. */
const fakeSocket = (length: () => number) => {
  const calls: Array<string> = []
  const events = new EventEmitter()
  return {
    calls,
    events,
    socket: {
      cork: () => void calls.push("cork"),
      uncork: () => void calls.push("uncork"),
      get writableLength() {
        return length()
      },
      once: (event: "drain" | "close", listener: () => void) => events.once(event, listener),
      off: (event: "drain" | "close", listener: () => void) => events.off(event, listener)
    }
  }
}

const nextTick = () => new Promise<void>((resolve) => process.nextTick(resolve))

describe("SocketOutput: per-socket bound", () => {
  it("counts the frame about to be written (bytes plus per-frame overhead): one that would cross the bound destroys the socket and is not queued", () => {
    const O = SocketOutput.FRAME_OVERHEAD_BYTES
    const t = fakeWs()
    const out = SocketOutput.make(t.ws, undefined, { maxSocketBytes: 100 + 2 * O })
    out.send("x".repeat(60))
    expect(t.sent).toHaveLength(1)
    expect(out.buffered()).toBe(60 + O)
    // 60 + O waiting + 41 + O about to be written > 100 + 2 O: previously the check looked only at the 60 already waiting
    out.send("y".repeat(41))
    expect(t.sent).toHaveLength(1)
    expect(t.terminated()).toBe(1)
    expect(t.closes).toEqual([])
    expect(out.closeReason()).toBe("slow_consumer")
    expect(out.limit()).toBe("socket")
  })

  it("destroys at once instead of queueing a close frame behind the backlog", () => {
    const t = fakeWs()
    const out = SocketOutput.make(t.ws, undefined, { maxSocketBytes: 8 * KiB })
    for (let i = 0; i < 100; i++) out.send("z".repeat(100))
    expect(t.terminated()).toBe(1)
    expect(t.closes).toEqual([])
    expect(t.sent.length).toBeLessThanOrEqual(81)
  })

  it("drops frames for a socket that is no longer open", () => {
    const t = fakeWs(2)
    SocketOutput.make(t.ws, undefined, { maxSocketBytes: 100 }).send("c")
    expect(t.sent).toEqual([])
    expect(t.terminated()).toBe(0)
  })
})

describe("SocketOutput: process budget", () => {
  it("over the budget, the socket with the most unsent bytes is dropped first, until the total fits", () => {
    const budget = SocketOutput.makeBudget(300 * KiB)
    const sockets = [100, 200, 150].map(() => fakeWs())
    const outs = sockets.map((t) => SocketOutput.make(t.ws, undefined, { maxSocketBytes: 8 * 1024 * KiB }, budget))
    outs[0]!.send("a".repeat(100 * KiB))
    outs[1]!.send("b".repeat(120 * KiB))
    const O = SocketOutput.FRAME_OVERHEAD_BYTES
    expect(budget.tracked()).toBe(220 * KiB + 2 * O)
    expect(sockets.map((t) => t.terminated())).toEqual([0, 0, 0])
    // 220 + 150 > 300: the largest (socket 2, 150 KiB) goes first and the rest fit
    outs[2]!.send("c".repeat(150 * KiB))
    expect(sockets.map((t) => t.terminated())).toEqual([0, 0, 1])
    expect(outs[2]!.closeReason()).toBe("slow_consumer")
    expect(outs[2]!.limit()).toBe("process")
    expect(budget.tracked()).toBe(220 * KiB + 2 * O)
    expect(budget.dropped()).toBe(1)
  })

  it("re-reads the sockets before dropping: bytes the clients took meanwhile count as gone", () => {
    const budget = SocketOutput.makeBudget(300 * KiB)
    const a = fakeWs()
    const b = fakeWs()
    const outA = SocketOutput.make(a.ws, undefined, { maxSocketBytes: 8 * 1024 * KiB }, budget)
    const outB = SocketOutput.make(b.ws, undefined, { maxSocketBytes: 8 * 1024 * KiB }, budget)
    outA.send("a".repeat(200 * KiB))
    a.ws.bufferedAmount = 0 // client A read everything
    outB.send("b".repeat(200 * KiB))
    expect([a.terminated(), b.terminated()]).toEqual([0, 0])
    expect(budget.tracked()).toBe(200 * KiB + SocketOutput.FRAME_OVERHEAD_BYTES)
  })

  it("a socket's bound is at most the process budget, so that a lone socket backs up (the client is slowed) before the budget would drop it", () => {
    const budgetBytes = 64 * KiB
    expect(SocketOutput.limitsFor(8 * 1024 * KiB, budgetBytes)).toEqual({ maxSocketBytes: budgetBytes })
    expect(SocketOutput.limitsFor(64 * KiB, 256 * 1024 * KiB)).toEqual({ maxSocketBytes: 64 * KiB })
    const budget = SocketOutput.makeBudget(budgetBytes)
    const t = fakeWs()
    const tcp = fakeSocket(() => t.ws.bufferedAmount)
    const out = SocketOutput.make(t.ws, tcp.socket, SocketOutput.limitsFor(8 * 1024 * KiB, budgetBytes), budget)
    // replies to a client that does not read: the connection stops handling its frames at backedUp()
    while (!out.backedUp() && t.terminated() === 0) out.send("r".repeat(100))
    expect(t.terminated()).toBe(0)
    expect(out.buffered()).toBeLessThan(budgetBytes)
    expect(budget.dropped()).toBe(0)
  })

  it("small sockets are not tracked", () => {
    const budget = SocketOutput.makeBudget(300 * KiB)
    const t = fakeWs()
    SocketOutput.make(t.ws, undefined, { maxSocketBytes: 8 * 1024 * KiB }, budget).send("x".repeat(1000))
    expect(budget.trackedSockets()).toBe(0)
  })
})

describe("SocketOutput: corking and draining", () => {
  it("corks once per tick, uncorks on the next tick, and flushes every 64 KiB", async () => {
    const t = fakeWs()
    let length = 0
    const tcp = fakeSocket(() => length)
    const out = SocketOutput.make(t.ws, tcp.socket, { maxSocketBytes: 8 * 1024 * KiB })
    out.send("1")
    out.send("2")
    expect(tcp.calls).toEqual(["cork"])
    length = 64 * KiB
    out.send("3")
    expect(tcp.calls).toEqual(["cork", "uncork", "cork"])
    length = 0
    await nextTick()
    expect(tcp.calls).toEqual(["cork", "uncork", "cork", "uncork"])
    out.send("4")
    expect(tcp.calls.at(-1)).toBe("cork")
    expect(t.sent).toEqual(["1", "2", "3", "4"])
  })

  it("under a small per-socket bound, flushes once a quarter of it waits, per-frame overhead included (review finding: 64 KiB of bytes were held past a 64 KiB bound)", () => {
    const O = SocketOutput.FRAME_OVERHEAD_BYTES
    const t = fakeWs()
    const tcp = fakeSocket(() => t.ws.bufferedAmount)
    const out = SocketOutput.make(t.ws, tcp.socket, { maxSocketBytes: 64 * KiB })
    expect(SocketOutput.corkFlushBytes(64 * KiB)).toBe(16 * KiB)
    expect(SocketOutput.corkFlushBytes(8 * 1024 * KiB)).toBe(SocketOutput.CORK_FLUSH_BYTES)
    const frame = "f".repeat(200)
    // 36 frames of 200 bytes hold 36 × (200 + O) = 16,416 bytes as the bound counts them: the 36th flushes
    for (let i = 0; i < 35; i++) out.send(frame)
    expect(tcp.calls).toEqual(["cork"])
    out.send(frame)
    expect(tcp.calls).toEqual(["cork", "uncork", "cork"])
    expect(36 * (200 + O)).toBeGreaterThanOrEqual(16 * KiB)
    expect(t.terminated()).toBe(0)
  })

  it("a frame that would cross the bound is looked at again once the corked frames were flushed: a reader that keeps up took them; one that is behind did not", () => {
    const O = SocketOutput.FRAME_OVERHEAD_BYTES
    for (const keepsUp of [true, false]) {
      const t = fakeWs()
      const tcp = fakeSocket(() => t.ws.bufferedAmount)
      // a reader that keeps up: the kernel takes whatever an uncork hands it
      const socket = { ...tcp.socket, uncork: () => void (tcp.calls.push("uncork"), keepsUp && (t.ws.bufferedAmount = 0)) }
      Object.defineProperty(socket, "writableLength", { get: () => t.ws.bufferedAmount })
      const out = SocketOutput.make(t.ws, socket, { maxSocketBytes: 64 * KiB })
      out.send("a".repeat(100))
      // bigger than the bound itself: written only when nothing else waits
      out.send("b".repeat(64 * KiB - O))
      expect(t.terminated(), `keepsUp ${keepsUp}`).toBe(keepsUp ? 0 : 1)
      expect(t.sent.length).toBe(keepsUp ? 2 : 1)
    }
  })

  it.effect("drained waits while more than the high-water mark is unsent, and resumes on drain", () =>
    Effect.gen(function*() {
      const t = fakeWs()
      const tcp = fakeSocket(() => t.ws.bufferedAmount)
      const out = SocketOutput.make(t.ws, tcp.socket, { maxSocketBytes: 8 * 1024 * KiB })
      yield* out.drained // not backed up: immediate
      out.send("x".repeat(SocketOutput.HIGH_WATER_BYTES + 1))
      expect(out.backedUp()).toBe(true)
      const waiting = yield* Effect.forkChild(out.drained)
      yield* Effect.yieldNow
      expect(waiting.pollUnsafe()).toBeUndefined()
      t.ws.bufferedAmount = 0
      tcp.events.emit("drain")
      yield* Fiber.join(waiting)
      expect(tcp.events.listenerCount("drain")).toBe(0)
    }))

  it.effect("drained resumes when a queue grew past the mark with no write returning false (no drain will come): an empty write is the flush barrier", () =>
    Effect.gen(function*() {
      const t = fakeWs()
      const tcp = fakeSocket(() => t.ws.bufferedAmount)
      const flushed: Array<() => void> = []
      const socket = { ...tcp.socket, writableNeedDrain: false, write: (_: Uint8Array, cb: () => void) => void flushed.push(cb) }
      Object.defineProperty(socket, "writableLength", { get: () => t.ws.bufferedAmount })
      const out = SocketOutput.make(t.ws, socket, { maxSocketBytes: 8 * 1024 * KiB })
      out.send("x".repeat(SocketOutput.HIGH_WATER_BYTES + 1))
      const waiting = yield* Effect.forkChild(out.drained)
      yield* Effect.yieldNow
      expect(waiting.pollUnsafe()).toBeUndefined()
      // before the fix it waited for a "drain" that never comes; now the barrier's callback resumes it
      expect(flushed).toHaveLength(1)
      t.ws.bufferedAmount = 0
      flushed[0]!()
      yield* Fiber.join(waiting)
      expect(tcp.events.listenerCount("drain")).toBe(0)
    }))
})

describe("SocketOutput: the smallest socket bound over a real server", () => {
  it.live("a normal reader on a server with AGENTWIRE_SOCKET_BUFFER_BYTES=65536 gets a burst of a few hundred events without being dropped (review finding: corked frames were held past the bound, 1006 after 0 events)", () =>
    Effect.gen(function*() {
      const server = yield* AgentwireServer
      const token = yield* Auth.use((auth) => auth.issue("burst-reader", 600))
      const client = yield* connect(`${server.url.replace(/^http/, "ws")}/ws`, { headers: { authorization: `Bearer ${token}` } })
      yield* client.next("connection_established")
      // 400 steps with no pause: the run's events reach the socket within a tick or a few
      client.send({ type: "start_agent", agent: "ticker", user_request: "steps=400 interval_ms=0", request_id: "burst" })
      const { run_id } = yield* client.next("run_accepted", (m) => m.request_id === "burst")
      const events = yield* client.runEvents(run_id)
      expect(events.at(-1)).toMatchObject({ type: "agent_completed", status: "completed", depth: 0 })
      expect(events.map((m) => ("seq" in m ? m.seq : 0))).toEqual(Array.from({ length: 402 }, (_, i) => i + 1))
      expect(client.ws.readyState).toBe(WebSocket.OPEN)
    }).pipe(Effect.scoped, Effect.provide(TestServer.serverLayer({ heartbeatIntervalMs: 0, maxSocketBufferBytes: 65_536 }))), 30_000)

  it.live("an event bigger than the bound itself (an echo of a request of max_message_bytes) still reaches a reader that keeps up: a frame is dropped only when others wait", () =>
    Effect.gen(function*() {
      const server = yield* AgentwireServer
      const token = yield* Auth.use((auth) => auth.issue("big-frame", 600))
      const client = yield* connect(`${server.url.replace(/^http/, "ws")}/ws`, { headers: { authorization: `Bearer ${token}` } })
      yield* client.next("connection_established")
      client.send({ type: "start_agent", agent: "echo", user_request: "e".repeat(65_000), request_id: "big" })
      const { run_id } = yield* client.next("run_accepted", (m) => m.request_id === "big")
      const events = yield* client.runEvents(run_id)
      expect(events.at(-1)).toMatchObject({ type: "agent_completed", status: "completed", depth: 0 })
      expect(client.ws.readyState).toBe(WebSocket.OPEN)
    }).pipe(Effect.scoped, Effect.provide(TestServer.serverLayer({ heartbeatIntervalMs: 0, maxSocketBufferBytes: 65_536 }))), 30_000)
})
