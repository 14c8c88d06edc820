/**
 * Issue 10 over real sockets: resume after reconnect, list_runs, server_epoch,
 * RUN_NOT_FOUND / RUN_EXPIRED, the event cap, and a seeded random test that
 * cuts connections at random points (mid-run, mid-replay, at the seam).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import WebSocket from "ws"
import * as AgentwireConfig from "../src/layers/AgentwireConfig.ts"
import { decodeServerMessage, type ServerMessage } from "../src/protocol/Protocol.ts"
import type { AgentwireSettings } from "../src/services/AgentwireConfig.ts"
import { AgentwireServer } from "../src/services/AgentwireServer.ts"
import { Auth } from "../src/services/Auth.ts"
import { ExecutionEngineFactory } from "../src/services/ExecutionEngineFactory.ts"
import * as UserExecutionContext from "../src/services/UserExecutionContext.ts"
import { type Client, connect } from "./fixtures/client.ts"
import * as TestServer from "./fixtures/testServer.ts"

const serverLayer = (settings: Partial<AgentwireSettings> = {}) => TestServer.serverLayer(settings)

const wsUrl = AgentwireServer.useSync((s) => `${s.url.replace(/^http/, "ws")}/ws`)
const tokenFor = (user: string) => Auth.use((auth) => auth.issue(user, 600))

const connectAs = (user: string) =>
  Effect.gen(function*() {
    const token = yield* tokenFor(user)
    const client = yield* connect(yield* wsUrl, { headers: { authorization: `Bearer ${token}` } })
    const established = yield* client.next("connection_established")
    return { client, established }
  })

const startTicker = (client: Client, request: string) =>
  Effect.gen(function*() {
    const request_id = UserExecutionContext.generateId("req")
    client.send({ type: "start_agent", agent: "ticker", user_request: request, request_id })
    return (yield* client.next("run_accepted", (m) => m.request_id === request_id)).run_id
  })

/** Starts a ticker run with no connection at all, and waits for its end. */
const runUnwatched = (user: string, request: string) =>
  Effect.gen(function*() {
    const engines = yield* ExecutionEngineFactory
    const context = yield* UserExecutionContext.make({ user_id: user })
    const handle = yield* engines.start(context, "ticker", request)
    const outcome = yield* handle.await
    return { run_id: handle.run_id, outcome }
  })

const seqsOf = (frames: ReadonlyArray<ServerMessage>, run_id: string) =>
  frames.flatMap((m) => ("seq" in m && m.run_id === run_id ? [m.seq] : []))

const oneTo = (n: number, from = 1) => Array.from({ length: n - from + 1 }, (_, i) => from + i)

describe("resume_run and list_runs", () => {
  it.live("events produced with no connection at all arrive after connect + resume; list_runs lists the run; the epoch is the process's", () =>
    Effect.gen(function*() {
      const { outcome, run_id } = yield* runUnwatched("zoe", "steps=30 interval_ms=0")
      expect(outcome.status).toBe("completed")
      const { client, established } = yield* connectAs("zoe")
      expect(established.server_epoch).toMatch(/^epoch_/)
      client.send({ type: "list_runs", request_id: "l1" })
      const runs = yield* client.next("runs", (m) => m.request_id === "l1")
      expect(runs.runs).toEqual([expect.objectContaining({ run_id, status: "completed", agent_name: "ticker", last_seq: 32 })])
      client.send({ type: "resume_run", run_id, after_seq: 0, request_id: "r1" })
      const resumed = yield* client.next("run_resumed", (m) => m.request_id === "r1")
      expect(resumed).toMatchObject({ run_id, after_seq: 0, last_seq: 32, status: "completed" })
      expect(seqsOf(client.received, run_id)).toEqual(oneTo(32))
      // the marker comes after the replayed events
      const at = client.received.indexOf(resumed)
      expect(client.received.slice(at + 1).filter((m) => "seq" in m)).toEqual([])
      // another connection of the same process names the same epoch
      const second = yield* connectAs("zoe")
      expect(second.established.server_epoch).toBe(established.server_epoch)
    }).pipe(Effect.scoped, Effect.provide(serverLayer())))

  it.live("a resume from the middle of a live run replays the gap, marks the seam, then follows live: 1..n exactly once", () =>
    Effect.gen(function*() {
      const first = yield* connectAs("amy")
      const run_id = yield* startTicker(first.client, "steps=60 interval_ms=3")
      yield* first.client.count("agent_thinking", 10)
      first.client.ws.terminate()
      const got = seqsOf(first.client.received, run_id)
      const after = got[got.length - 1]!
      const { client } = yield* connectAs("amy")
      client.send({ type: "resume_run", run_id, after_seq: after })
      yield* client.next("agent_completed", (m) => m.run_id === run_id && m.depth === 0)
      const resumed = yield* client.next("run_resumed")
      expect(resumed.after_seq).toBe(after)
      const mine = seqsOf(client.received, run_id)
      expect(new Set(mine).size).toBe(mine.length)
      expect([...got, ...mine].sort((a, b) => a - b)).toEqual(oneTo(62))
      // after the marker, live events follow in order
      const afterMarker = seqsOf(client.received.slice(client.received.indexOf(resumed) + 1), run_id)
      expect(afterMarker).toEqual(oneTo(62, resumed.last_seq + 1))
    }).pipe(Effect.scoped, Effect.provide(serverLayer())))

  it.live("two tabs resume the same run from different seqs: each gets exactly what is after its own seq, once", () =>
    Effect.gen(function*() {
      const { run_id } = yield* runUnwatched("tabs", "steps=40 interval_ms=0")
      const a = yield* connectAs("tabs")
      const b = yield* connectAs("tabs")
      a.client.send({ type: "resume_run", run_id, after_seq: 5 })
      b.client.send({ type: "resume_run", run_id, after_seq: 30 })
      yield* a.client.next("run_resumed")
      yield* b.client.next("run_resumed")
      expect(seqsOf(a.client.received, run_id)).toEqual(oneTo(42, 6))
      expect(seqsOf(b.client.received, run_id)).toEqual(oneTo(42, 31))
      // a second resume on a connection that already has everything sends nothing again
      a.client.send({ type: "resume_run", run_id, after_seq: 0, request_id: "again" })
      yield* a.client.next("run_resumed", (m) => m.request_id === "again")
      const seqs = seqsOf(a.client.received, run_id)
      expect(seqs.filter((s) => s <= 5)).toEqual(oneTo(5))
      expect(new Set(seqs).size).toBe(seqs.length)
    }).pipe(Effect.scoped, Effect.provide(serverLayer())))

  it.live("resume while the stop lands: the replay, agent_stopped and the cancelled completion each arrive once", () =>
    Effect.gen(function*() {
      const first = yield* connectAs("sam")
      const run_id = yield* startTicker(first.client, "steps=5000 interval_ms=2")
      yield* first.client.count("agent_thinking", 5)
      first.client.ws.terminate()
      const { client } = yield* connectAs("sam")
      client.send({ type: "resume_run", run_id, after_seq: 2 })
      client.send({ type: "stop_agent", run_id, request_id: "stop" })
      const stopped = yield* client.next("run_stopped", (m) => m.request_id === "stop")
      expect(stopped.run_ids).toEqual([run_id])
      const done = yield* client.next("agent_completed", (m) => m.run_id === run_id && m.depth === 0)
      expect(done.status).toBe("cancelled")
      yield* client.next("run_resumed")
      const mine = seqsOf(client.received, run_id)
      expect(mine.sort((a, b) => a - b)).toEqual(oneTo(done.seq, 3))
      expect(client.received.filter((m) => m.type === "agent_stopped").length).toBe(1)
    }).pipe(Effect.scoped, Effect.provide(serverLayer())))

  it.live("a slow reader resuming a 10,000-event run gets all of it, paced by its socket, never dropped as a slow consumer", () =>
    Effect.gen(function*() {
      const { run_id } = yield* runUnwatched("slow", "steps=10000 interval_ms=0")
      const { client } = yield* connectAs("slow")
      // the client stops reading: the replay must wait for it instead of filling the socket's bound
      const socket = (client.ws as unknown as { _socket: import("node:net").Socket })._socket
      socket.pause()
      client.send({ type: "resume_run", run_id, after_seq: 0 })
      // not a synchronisation: the reader is away for a while (the replay meanwhile must wait, not buffer)
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 300)))
      socket.resume()
      yield* client.next("run_resumed")
      expect(seqsOf(client.received, run_id)).toEqual(oneTo(10_002))
      expect(client.ws.readyState).toBe(WebSocket.OPEN)
    }).pipe(Effect.scoped, Effect.provide(serverLayer({ maxSocketBufferBytes: 65_536 }))), 60_000)

  it.live("eight readers that are away while resuming a long run are not dropped by the process budget: a waiting replay holds one page", () =>
    Effect.gen(function*() {
      const { run_id } = yield* runUnwatched("away", "steps=20000 interval_ms=0")
      const clients: Array<Client> = []
      for (let i = 0; i < 8; i++) clients.push((yield* connectAs("away")).client)
      const sockets = clients.map((c) => (c.ws as unknown as { _socket: import("node:net").Socket })._socket)
      for (const socket of sockets) socket.pause()
      for (const client of clients) client.send({ type: "resume_run", run_id, after_seq: 0 })
      // not a synchronisation: the readers are away for a while; before, 6 of 8 were dropped (limit=process)
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 500)))
      for (const socket of sockets) socket.resume()
      for (const client of clients) {
        yield* client.next("run_resumed")
        expect(seqsOf(client.received, run_id).length).toBe(20_002)
        expect(client.ws.readyState).toBe(WebSocket.OPEN)
      }
    }).pipe(Effect.scoped, Effect.provide(serverLayer({ maxProcessBufferBytes: 1024 * 1024, maxConnectionsPerUser: 20 }))), 60_000)

  it.live("resume(0), then resume(after 15000) while the first is behind, then resume(0): every event once, and each replaced request is answered RESUME_REPLACED", () =>
    Effect.gen(function*() {
      const { run_id } = yield* runUnwatched("jumpy", "steps=20000 interval_ms=0")
      const { client } = yield* connectAs("jumpy")
      const socket = (client.ws as unknown as { _socket: import("node:net").Socket })._socket
      socket.pause()
      client.send({ type: "resume_run", run_id, after_seq: 0, request_id: "first" })
      client.send({ type: "resume_run", run_id, after_seq: 15_000, request_id: "second" })
      client.send({ type: "resume_run", run_id, after_seq: 0, request_id: "third" })
      socket.resume()
      yield* client.next("run_resumed", (m) => m.request_id === "third")
      const replaced = client.received.filter((m) => m.type === "error" && m.code === "RESUME_REPLACED").map((m) => (m as { request_id?: string }).request_id)
      expect(replaced.sort()).toEqual(["first", "second"])
      const seqs = seqsOf(client.received, run_id)
      expect(new Set(seqs).size).toBe(seqs.length)
      expect([...seqs].sort((a, b) => a - b)).toEqual(oneTo(20_002))
    }).pipe(Effect.scoped, Effect.provide(serverLayer())), 60_000)

  it.live("a replay that started within the retention window finishes even when the window ends during it", () =>
    Effect.gen(function*() {
      const { run_id } = yield* runUnwatched("late", "steps=20000 interval_ms=0")
      const { client } = yield* connectAs("late")
      const socket = (client.ws as unknown as { _socket: import("node:net").Socket })._socket
      socket.pause()
      client.send({ type: "resume_run", run_id, after_seq: 0 })
      // not a synchronisation: the reader is away past the 1.5 s retention; before, the replay ended in RUN_EXPIRED
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 2500)))
      socket.resume()
      yield* client.next("run_resumed")
      expect(seqsOf(client.received, run_id)).toEqual(oneTo(20_002))
    }).pipe(Effect.scoped, Effect.provide(serverLayer({ runLog: { ...AgentwireConfig.DEFAULT_RUN_LOG_SETTINGS, retentionMs: 1500 } }))), 60_000)

  it.live("unknown runs and other users' runs are RUN_NOT_FOUND alike; after_seq past the end names the field; bad after_seq is INVALID_MESSAGE", () =>
    Effect.gen(function*() {
      const { run_id } = yield* runUnwatched("owner", "steps=3 interval_ms=0")
      const { client } = yield* connectAs("intruder")
      client.send({ type: "resume_run", run_id, after_seq: 0, request_id: "a" })
      const foreign = yield* client.next("error", (m) => m.request_id === "a")
      client.send({ type: "resume_run", run_id: "run_doesnotexist", after_seq: 0, request_id: "b" })
      const unknown = yield* client.next("error", (m) => m.request_id === "b")
      expect(foreign.code).toBe("RUN_NOT_FOUND")
      expect(unknown.code).toBe("RUN_NOT_FOUND")
      expect(foreign.message.replace(run_id, "X")).toBe(unknown.message.replace("run_doesnotexist", "X"))
      client.send({ type: "list_runs", request_id: "l" })
      expect((yield* client.next("runs", (m) => m.request_id === "l")).runs).toEqual([])

      const owner = yield* connectAs("owner")
      owner.client.send({ type: "resume_run", run_id, after_seq: 6, request_id: "c" })
      const beyond = yield* owner.client.next("error", (m) => m.request_id === "c")
      expect(beyond.code).toBe("INVALID_MESSAGE")
      expect(beyond.message).toContain("after_seq 6")
      for (const [after_seq, id] of [[-1, "d"], [1.5, "e"], ["3", "f"]] as const) {
        owner.client.send({ type: "resume_run", run_id, after_seq, request_id: id })
        const bad = yield* owner.client.next("error", (m) => m.request_id === id)
        expect(bad.code).toBe("INVALID_MESSAGE")
        expect(bad.message).toContain("after_seq")
      }
      // the connection lives on
      owner.client.send({ type: "resume_run", run_id, after_seq: 4, request_id: "g" })
      expect((yield* owner.client.next("run_resumed", (m) => m.request_id === "g")).last_seq).toBe(5)
    }).pipe(Effect.scoped, Effect.provide(serverLayer())))

  it.live("a run evicted from retention answers RUN_EXPIRED with its last_seq, to its owner only", () =>
    Effect.gen(function*() {
      const { run_id } = yield* runUnwatched("evi", "steps=40 interval_ms=0")
      // each later run pushes the oldest finished one out of the small byte budget
      for (let i = 0; i < 6; i++) yield* runUnwatched("evi", "steps=40 interval_ms=0")
      const { client } = yield* connectAs("evi")
      client.send({ type: "resume_run", run_id, after_seq: 0, request_id: "x" })
      const expired = yield* client.next("error", (m) => m.request_id === "x")
      expect(expired).toMatchObject({ code: "RUN_EXPIRED", run_id, last_seq: 42 })
      const other = yield* connectAs("someone-else")
      other.client.send({ type: "resume_run", run_id, after_seq: 0, request_id: "y" })
      expect((yield* other.client.next("error", (m) => m.request_id === "y")).code).toBe("RUN_NOT_FOUND")
    }).pipe(Effect.scoped, Effect.provide(serverLayer({
      runLog: { ...AgentwireConfig.DEFAULT_RUN_LOG_SETTINGS, maxBytes: 40_000 }
    }))))

  it.live("a run past AGENTWIRE_MAX_EVENTS_PER_RUN fails with EVENT_LIMIT, never silently truncated", () =>
    Effect.gen(function*() {
      const { client } = yield* connectAs("chatty")
      const run_id = yield* startTicker(client, "steps=1000 interval_ms=0")
      const events = yield* client.runEvents(run_id)
      const last = events[events.length - 1]!
      expect(last).toMatchObject({ type: "agent_completed", status: "failed", depth: 0 })
      const error = events.find((m) => m.type === "agent_error")
      expect(error).toMatchObject({ error: { code: "EVENT_LIMIT" } })
      expect(events.length).toBeLessThanOrEqual(200)
      expect(seqsOf(events, run_id)).toEqual(oneTo(events.length))
    }).pipe(Effect.scoped, Effect.provide(serverLayer({ runLog: { ...AgentwireConfig.DEFAULT_RUN_LOG_SETTINGS, maxEventsPerRun: 200 } }))))

  it.live("list_runs: newest first, filtered by thread and status", () =>
    Effect.gen(function*() {
      const a = yield* runUnwatched("lister", "steps=2 interval_ms=0")
      const b = yield* runUnwatched("lister", "steps=2 interval_ms=0")
      const { client } = yield* connectAs("lister")
      const running = yield* startTicker(client, "steps=1000 interval_ms=50")
      client.send({ type: "list_runs", request_id: "all" })
      expect((yield* client.next("runs", (m) => m.request_id === "all")).runs.map((r) => r.run_id)).toEqual([running, b.run_id, a.run_id])
      client.send({ type: "list_runs", status: "running", request_id: "run" })
      const active = (yield* client.next("runs", (m) => m.request_id === "run")).runs
      expect(active.map((r) => r.run_id)).toEqual([running])
      expect(active[0]!.ended_at).toBeUndefined()
      client.send({ type: "list_runs", limit: 1, status: "completed", request_id: "one" })
      expect((yield* client.next("runs", (m) => m.request_id === "one")).runs.map((r) => r.run_id)).toEqual([b.run_id])
      client.send({ type: "list_runs", status: "sleeping", request_id: "bad" })
      expect((yield* client.next("error", (m) => m.request_id === "bad")).message).toContain("status")
    }).pipe(Effect.scoped, Effect.provide(serverLayer())))
})

// ---------------------------------------------------------------------------
// seeded random cuts

/** mulberry32: a small seeded generator, so that a failing iteration can be replayed from its seed. */
const random = (seed: number) => () => {
  seed = (seed + 0x6D2B79F5) | 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const ITERATIONS = Number(process.env.AGENTWIRE_RESUME_ITERATIONS ?? 150)
const SEED = Number(process.env.AGENTWIRE_RESUME_SEED ?? 20261130)

interface Cut {
  /** Frames of the run this connection reads before it is cut (Infinity: never). */
  readonly after: number
}

/**
 * One client that keeps reconnecting: the first connection starts a ticker
 * run, each later one resumes from the highest seq seen so far (the client
 * deduplicates by seq, as a real client does). Each connection is cut after a
 * random number of the run's frames. Returns every connection's frames.
 */
const randomSession = (url: string, token: string, rand: () => number) =>
  new Promise<{
    readonly n: number
    readonly perConnection: ReadonlyArray<{ readonly after: number; readonly seqs: ReadonlyArray<number>; readonly complete: boolean }>
  }>((resolve, reject) => {
    const steps = 5 + Math.floor(rand() * 40)
    const interval = Math.floor(rand() * 3)
    const seen = new Set<number>()
    const perConnection: Array<{ after: number; seqs: Array<number>; complete: boolean }> = []
    let run_id: string | undefined
    let n: number | undefined
    const contiguous = () => {
      let k = 0
      while (seen.has(k + 1)) k++
      return k
    }
    const next = () => {
      if (perConnection.length > 60) return reject(new Error("no end after 60 connections"))
      const cut: Cut = { after: rand() < 0.25 ? Number.POSITIVE_INFINITY : Math.floor(rand() * (steps + 4)) }
      const after = contiguous()
      const mine = { after, seqs: [] as Array<number>, complete: false }
      perConnection.push(mine)
      const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` } })
      let alive = true
      let resumedSeen = false
      const finish = () => {
        if (n !== undefined && contiguous() === n && (resumedSeen || run_id !== undefined && perConnection.length === 1)) {
          alive = false
          mine.complete = true
          ws.terminate()
          resolve({ n, perConnection })
          return true
        }
        return false
      }
      ws.on("error", () => {})
      ws.on("message", (data) => {
        if (!alive) return
        const m = decodeServerMessage(data.toString())
        if (m.type === "connection_established") {
          if (run_id === undefined) ws.send(JSON.stringify({ type: "start_agent", agent: "ticker", user_request: `steps=${steps} interval_ms=${interval}` }))
          else ws.send(JSON.stringify({ type: "resume_run", run_id, after_seq: after }))
          return
        }
        if (m.type === "run_accepted") {
          run_id = m.run_id
          return
        }
        if (m.type === "error") {
          alive = false
          ws.terminate()
          return reject(new Error(`error frame: ${m.code} ${m.message}`))
        }
        if (m.type === "run_resumed") {
          resumedSeen = true
          if (finish()) return
        }
        if ("seq" in m && m.run_id === run_id) {
          mine.seqs.push(m.seq)
          seen.add(m.seq)
          if (m.type === "agent_completed" && m.depth === 0) n = m.seq
          if (finish()) return
          if (mine.seqs.length >= cut.after) {
            alive = false
            ws.terminate()
            next()
          }
        }
      })
      ws.on("close", () => {
        if (alive) {
          alive = false
          next()
        }
      })
    }
    next()
  })

describe("resume under random cuts", () => {
  it.live(`${ITERATIONS} sessions cut at random points (seed ${SEED}): every connection gets each event at most once, nothing after its after_seq is missed, and the union is 1..n`, () =>
    Effect.gen(function*() {
      const url = yield* wsUrl
      const rand = random(SEED)
      for (let i = 0; i < ITERATIONS; i++) {
        const token = yield* tokenFor(`cut-${i}`)
        const session = yield* Effect.promise(() => randomSession(url, token, rand))
        const where = `iteration ${i} of seed ${SEED} (AGENTWIRE_RESUME_SEED=${SEED} replays it)`
        const union = new Set<number>()
        for (const [c, { after, complete, seqs }] of session.perConnection.entries()) {
          // at most once per connection, and never what the client said it had
          expect(new Set(seqs).size, `${where}, connection ${c}: duplicates in ${seqs}`).toBe(seqs.length)
          expect(seqs.every((s) => s > after), `${where}, connection ${c}: seq <= after_seq ${after} in ${seqs}`).toBe(true)
          // the connection that saw the end got everything after its after_seq: nothing skipped
          if (complete) {
            expect([...seqs].sort((a, b) => a - b), `${where}, connection ${c}: gap after ${after}`).toEqual(oneTo(session.n, after + 1))
          }
          for (const s of seqs) union.add(s)
        }
        expect([...union].sort((a, b) => a - b), where).toEqual(oneTo(session.n))
      }
    }).pipe(Effect.scoped, Effect.provide(serverLayer({ maxConnectionsPerUser: 100 }))), 120_000)
})
