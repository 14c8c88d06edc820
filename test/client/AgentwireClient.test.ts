/**
 * agentwire/client against a real server on port 0 (Node 24's global
 * WebSocket, as a Node user of the library would run it), with a TCP proxy in
 * between to fail the network: start/stream/stop, seeded random cuts (each
 * event exactly once, in order), an epoch change (runs reported lost), a
 * retried start (one run), token refresh in-band and by reconnect.
 */
import { Effect, Exit, Scope, Stream } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import {
  type AgentEvent,
  type Client,
  type ClientOptions,
  CommandError,
  connect,
  type ConnectionState,
  RunLostError
} from "../../src/client/AgentwireClient.ts"
import { AgentwireClient, AgentwireRunLost, layer } from "../../src/client/Effect.ts"
import { connect as rawConnect } from "../fixtures/client.ts"
import { startProxy } from "../fixtures/proxy.ts"
import { startServer, type TestServer } from "../fixtures/testServer.ts"

const cleanups: Array<() => Promise<void> | void> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const server = async (settings: Parameters<typeof startServer>[0] = {}) => {
  const s = await startServer(settings)
  cleanups.push(() => s.close())
  return s
}
const proxyTo = async (s: TestServer) => {
  const p = await startProxy(s.port)
  cleanups.push(() => p.close())
  return p
}
const client = (options: ClientOptions) => {
  const c = connect(options)
  cleanups.push(() => c.close())
  return c
}
const fast = { reconnect: { initialDelayMs: 5, maxDelayMs: 50 } } as const

/** Resolves at the first state matching `where` (now or later). */
const stateOf = (c: Client, where: (s: ConnectionState) => boolean) =>
  new Promise<ConnectionState>((resolve) => {
    if (where(c.state)) return resolve(c.state)
    const off = c.onState((s) => {
      if (where(s)) {
        off()
        resolve(s)
      }
    })
  })

const collect = async (run: AsyncIterable<AgentEvent>) => {
  const out: Array<AgentEvent> = []
  for await (const e of run) out.push(e)
  return out
}
const oneTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1)

/** mulberry32: a small seeded generator, so a failing iteration can be replayed from its seed. */
const seeded = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

describe("agentwire/client", () => {
  it("starts a run, streams its events in order, lists it, and stops another", async () => {
    const s = await server()
    const c = client({ url: `${s.url.replace("http", "ws")}/ws`, token: await s.issue("ann"), ...fast })
    const calc = await c.start("calculator", "2+3*4", { thread_id: "t-1" })
    expect(calc.run_id).toMatch(/^run_/)
    const events = await collect(calc)
    expect(events.map((e) => e.type)).toEqual(["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"])
    expect(events.map((e) => e.seq)).toEqual(oneTo(5))
    expect((await calc.completed).final_response).toBe("2+3*4 = 14")
    expect(c.state).toMatchObject({ status: "open", reconnects: 0 })

    const ticker = await c.start("ticker", "steps=10000 interval_ms=5")
    const seen: Array<AgentEvent> = []
    for await (const e of ticker) {
      seen.push(e)
      if (seen.length === 3) break
    }
    expect(await c.stop(ticker.run_id)).toEqual([ticker.run_id])
    // events the first iterator took are let go: a second iterator goes on from there
    const rest = await collect(ticker)
    const all = [...seen, ...rest]
    expect(all.map((e) => e.seq)).toEqual(oneTo(all.length))
    expect(all.at(-2)?.type).toBe("agent_stopped")
    expect(all.at(-1)).toMatchObject({ type: "agent_completed", status: "cancelled", depth: 0 })
    expect(await c.stop(ticker.run_id)).toEqual([])

    const runs = await c.listRuns()
    expect(runs.map((r) => [r.run_id, r.status])).toEqual([[ticker.run_id, "cancelled"], [calc.run_id, "completed"]])
    await expect(c.start("nope", "x")).rejects.toMatchObject({ name: "CommandError", code: "UNKNOWN_AGENT" })
    await expect(c.start("nope", "x")).rejects.toBeInstanceOf(CommandError)
  })

  it("seeded random cuts, refusals and downtime: every event of every run exactly once, in seq order", async () => {
    const s = await server()
    const p = await proxyTo(s)
    const token = await s.issue("cuts")
    for (const seed of [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]) {
      const random = seeded(seed)
      const c = connect({ url: `ws://127.0.0.1:${p.port}/ws`, token, ...fast, random })
      const delivered: Array<string> = []
      c.onEvent((e) => delivered.push(`${e.run_id}:${e.seq}`))
      const steps = 60 + Math.floor(random() * 120)
      const runs = await Promise.all([0, 1, 2].map(() => c.start("ticker", `steps=${steps} interval_ms=1`)))
      const done = Promise.all(runs.map(collect))
      let finished = false
      void done.finally(() => (finished = true))
      let cuts = 0
      while (!finished) {
        // at a random moment: mid-run, mid-replay, at the seam, mid-frame
        await new Promise((r) => setTimeout(r, random() * 25))
        if (finished) break
        const down = random() < 0.25
        if (down) p.setDown(true)
        p.cutAll()
        cuts++
        if (down) {
          await new Promise((r) => setTimeout(r, random() * 30))
          p.setDown(false)
        }
      }
      const results = await done
      for (const [i, events] of results.entries()) {
        const seqs = events.map((e) => e.seq)
        expect(seqs, `seed ${seed} run ${i}`).toEqual(oneTo(steps + 2))
        expect(events.at(-1), `seed ${seed}`).toMatchObject({ type: "agent_completed", status: "completed" })
      }
      expect(new Set(delivered).size, `seed ${seed}: a duplicate reached onEvent`).toBe(delivered.length)
      expect(delivered.length).toBe(3 * (steps + 2))
      expect(cuts).toBeGreaterThan(0)
      c.close()
    }
  }, 60_000)

  it("another server_epoch after a reconnect: unfinished runs are reported lost, not awaited forever", async () => {
    const a = await startServer()
    const p = await proxyTo(a)
    const c = client({ url: `ws://127.0.0.1:${p.port}/ws`, token: await a.issue("epo"), ...fast })
    const open = await stateOf(c, (st) => st.status === "open")
    const run = await c.start("ticker", "steps=50000 interval_ms=10")
    const it = run[Symbol.asyncIterator]()
    for (let i = 0; i < 3; i++) await it.next()
    p.setDown(true)
    p.cutAll()
    await a.close()
    const b = await server()
    p.setTarget(b.port)
    p.setDown(false)
    await expect(run.completed).rejects.toMatchObject({ name: "RunLostError", reason: "server_restarted", run_id: run.run_id })
    await expect(collect({ [Symbol.asyncIterator]: () => it })).rejects.toBeInstanceOf(RunLostError)
    const after = await stateOf(c, (st) => st.status === "open")
    expect(after.status === "open" && open.status === "open" && after.epoch !== open.epoch).toBe(true)
    // the client is usable on the new server
    const next = await c.start("echo", "hello")
    expect((await next.completed).final_response).toContain("hello")
  })

  it("a start whose answer was lost is sent again with its request_id: one run, all its events once", async () => {
    const s = await server()
    const p = await proxyTo(s)
    const token = await s.issue("retry")
    const scope = Effect.runSync(Scope.make())
    cleanups.push(() => Effect.runPromise(Scope.close(scope, Exit.void)))
    const observer = await Effect.runPromise(
      rawConnect(`${s.url.replace("http", "ws")}/ws`, { headers: { authorization: `Bearer ${token}` } }).pipe(Scope.provide(scope), Effect.orDie)
    )
    const c = client({ url: `ws://127.0.0.1:${p.port}/ws`, token, ...fast })
    await stateOf(c, (st) => st.status === "open")
    // the start reaches the server; its run_accepted and events never come back on this connection
    p.muteAll()
    const started = c.start("ticker", "steps=30 interval_ms=5", { thread_id: "retry-thread" })
    await Effect.runPromise(observer.next("agent_started", (m) => m.thread_id === "retry-thread"))
    p.cutAll()
    const run = await started
    expect(run.duplicate).toBe(true)
    expect((await collect(run)).map((e) => e.seq)).toEqual(oneTo(32))
    const runs = await c.listRuns({ thread_id: "retry-thread" })
    expect(runs.length).toBe(1)
    expect(runs[0]!.run_id).toBe(run.run_id)
  })

  it("refreshes a short-lived token in-band before it expires: no reconnect", async () => {
    const s = await server({ jwtClockSkewSeconds: 0 })
    let issued = 0
    const c = client({
      url: `${s.url.replace("http", "ws")}/ws`,
      // `exp` is whole seconds, so a 5 s token lives 4 to 5 s; the client refreshes at least 1 s after the last
      // answer (its floor) and here 3.5 s before exp: every 1 to 1.5 s, each with 2.5 s or more to spare (with 3 s
      // and 1.5 s before, a token made at x.999 s left 1 s for the refresh's round trip on a loaded machine)
      token: () => {
        issued++
        return s.issue("fresh", 5)
      },
      refreshBeforeExpiryMs: 3500,
      ...fast
    })
    const states: Array<string> = []
    c.onState((st) => states.push(st.status))
    const run = await c.start("ticker", "steps=50 interval_ms=100")
    expect((await collect(run)).map((e) => e.seq)).toEqual(oneTo(52))
    expect(issued).toBeGreaterThanOrEqual(3)
    expect(states).not.toContain("reconnecting")
  }, 20_000)

  it("without in-band refresh, the 4001 close is followed by a reconnect with a fresh token and a resume", async () => {
    const s = await server({ jwtClockSkewSeconds: 0 })
    let issued = 0
    const c = client({
      url: `${s.url.replace("http", "ws")}/ws`,
      token: () => {
        issued++
        return s.issue("expiring", 2)
      },
      refreshBeforeExpiryMs: 0,
      ...fast
    })
    const run = await c.start("ticker", "steps=40 interval_ms=100")
    expect((await collect(run)).map((e) => e.seq)).toEqual(oneTo(42))
    expect(issued).toBeGreaterThanOrEqual(2)
    // the run ends near the second token's exp, so the client may be reconnecting again right now: wait for it to be open
    const after = await stateOf(c, (st) => st.status === "open")
    expect(after.status === "open" && after.reconnects).toBeGreaterThanOrEqual(1)
  }, 20_000)

  it("follows a run it did not start (from list_runs), from seq 0", async () => {
    const s = await server()
    const token = await s.issue("follower")
    const url = `${s.url.replace("http", "ws")}/ws`
    const first = client({ url, token, ...fast })
    const run = await first.start("ticker", "steps=20 interval_ms=0")
    await run.completed
    const second = client({ url, token, ...fast })
    const [info] = await second.listRuns()
    const followed = await collect(second.follow(info!.run_id))
    expect(followed).toEqual(run.events)
  })

  it("Effect face: events as a Stream, refusals as typed errors, a lost run as AgentwireRunLost", async () => {
    const s = await server()
    const token = await s.issue("effect")
    const url = `${s.url.replace("http", "ws")}/ws`
    const result = await Effect.runPromise(Effect.gen(function*() {
      const api = yield* AgentwireClient
      const run = yield* api.start("calculator", "6*7")
      const events = yield* Stream.runCollect(run.events)
      const refused = yield* Effect.flip(api.start("nope", "x"))
      const lost = yield* Effect.flip(Stream.runCollect((yield* api.follow("run_00000000000000000000000000000000")).events))
      return { events, refused, lost }
    }).pipe(Effect.provide(layer({ url, token, ...fast }))))
    expect(result.events.map((e) => e.seq)).toEqual(oneTo(5))
    expect(result.refused).toMatchObject({ _tag: "AgentwireCommandError", code: "UNKNOWN_AGENT" })
    expect(result.lost).toBeInstanceOf(AgentwireRunLost)
    expect(result.lost).toMatchObject({ reason: "not_found" })
  })
})
