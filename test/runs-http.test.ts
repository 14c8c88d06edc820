/**
 * Issue 10, the HTTP side: run queries (`GET /api/runs`, `GET /api/runs/{run_id}`)
 * and a run's events as JSON or as Server-Sent Events, over a real server on a
 * free port (docs/protocol.md, "HTTP run queries and SSE").
 *
 * The server's `RunLog` is the in-memory one behind a probe that counts the
 * waits in progress and records how far reads went per run: what a slow or a
 * departed SSE reader does to the server is asserted on those, not on time.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Layer, Option, Redacted, Schedule, Stream } from "effect"
import { TestClock } from "effect/testing"
import * as AgentInstanceFactoryLayer from "../src/layers/AgentInstanceFactory.ts"
import * as AgentwireConfigLayer from "../src/layers/AgentwireConfig.ts"
import * as AuthJwt from "../src/layers/AuthJwt.ts"
import * as ExecutionEngineFactoryLayer from "../src/layers/ExecutionEngineFactory.ts"
import * as RunAdmissionMemory from "../src/layers/RunAdmissionMemory.ts"
import * as RunLogMemory from "../src/layers/RunLogMemory.ts"
import * as WebSocketBridgeMemory from "../src/layers/WebSocketBridgeMemory.ts"
import * as Server from "../src/server/Server.ts"
import { AgentwireConfig, type AgentwireSettings } from "../src/services/AgentwireConfig.ts"
import { AgentwireServer } from "../src/services/AgentwireServer.ts"
import { Auth } from "../src/services/Auth.ts"
import { follow, RunLog } from "../src/services/RunLog.ts"
import { QuietLogs, registry } from "./fixtures/runtime.ts"
import { openSse, type SseClient } from "./fixtures/sse.ts"

const SECRET = "runs-http-suite-secret-0123456789abcdef"

// ---------------------------------------------------------------------------
// the probe around the server's log

/** What the test sees of the server's log: waits in progress, the highest seq read per run, and the log itself. */
interface Probe {
  inner: RunLog["Service"] | undefined
  waiting: number
  readonly readUpTo: Map<string, number>
  readonly listeners: Set<() => void>
}

const makeProbe = (): Probe => ({ inner: undefined, waiting: 0, readUpTo: new Map(), listeners: new Set() })

const changed = (probe: Probe) => {
  for (const listener of Array.from(probe.listeners)) listener()
}

/** Resumes once `predicate` holds, checked now and at every read or wait of the server's log. */
const probeUntil = (probe: Probe, predicate: () => boolean) =>
  Effect.callback<void>((resume) => {
    const check = () => {
      if (!predicate()) return
      probe.listeners.delete(check)
      resume(Effect.void)
    }
    probe.listeners.add(check)
    check()
    return Effect.sync(() => probe.listeners.delete(check))
  })

/** The in-memory log (retention from the config), observed by `probe`. */
const probedLog = (probe: Probe) =>
  Layer.effect(
    RunLog,
    Effect.gen(function*() {
      const config = yield* AgentwireConfig
      const log = yield* RunLogMemory.make(config.runLog)
      probe.inner = log
      return RunLog.of({
        ...log,
        read: (user_id, run_id, after_seq, limits) =>
          Effect.tap(log.read(user_id, run_id, after_seq, limits), (page) =>
            Effect.sync(() => {
              const last = page.events.at(-1)?.seq ?? 0
              if (last > (probe.readUpTo.get(run_id) ?? 0)) probe.readUpTo.set(run_id, last)
              changed(probe)
            })),
        waitFor: (user_id, run_id, after_seq) =>
          Effect.acquireUseRelease(
            Effect.sync(() => {
              probe.waiting++
              changed(probe)
            }),
            () => log.waitFor(user_id, run_id, after_seq),
            () =>
              Effect.sync(() => {
                probe.waiting--
                changed(probe)
              })
          )
      })
    })
  )

/** The server over the built-in and test agents, its log behind `probe`; starts are not rate-limited. */
const serverLayer = (probe: Probe, settings: Partial<AgentwireSettings> = {}) => {
  const runtime = ExecutionEngineFactoryLayer.layer.pipe(
    Layer.provideMerge(AgentInstanceFactoryLayer.layer),
    Layer.provideMerge(RunAdmissionMemory.layerConfig),
    Layer.provideMerge(probedLog(probe)),
    Layer.provideMerge(WebSocketBridgeMemory.layer)
  )
  return Server.layer.pipe(
    Layer.provideMerge(AuthJwt.layer),
    Layer.provideMerge(runtime),
    Layer.provide(registry),
    Layer.provide(QuietLogs),
    Layer.provideMerge(AgentwireConfigLayer.layer({
      port: 0,
      jwtSecret: Option.some(Redacted.make(SECRET)),
      runLimits: { ...AgentwireConfigLayer.DEFAULT_RUN_LIMITS, runStartsPerSecond: 0, maxRunsPerUser: 20 },
      sseHeartbeatMs: 100,
      ...settings
    }))
  )
}

// ---------------------------------------------------------------------------
// HTTP helpers

const serverUrl = AgentwireServer.useSync((s) => s.url)
const tokenFor = (user: string) => Auth.use((auth) => auth.issue(user, 300))

interface Answer {
  readonly status: number
  readonly headers: Headers
  readonly text: string
  readonly json: any
}

const request = (path: string, init: RequestInit = {}) =>
  Effect.flatMap(serverUrl, (url) =>
    Effect.promise(async (): Promise<Answer> => {
      const res = await fetch(`${url}${path}`, init)
      const text = await res.text()
      let json: unknown
      try {
        json = JSON.parse(text)
      } catch {
        json = undefined
      }
      return { status: res.status, headers: res.headers, text, json }
    }))

const getAs = (user: string, path: string, headers: Record<string, string> = {}) =>
  Effect.flatMap(tokenFor(user), (token) => request(path, { headers: { authorization: `Bearer ${token}`, ...headers } }))

/** Starts a run over `POST /api/runs`; its id. */
const startRun = (user: string, agent: string, user_request: string, extra: Record<string, string> = {}) =>
  Effect.gen(function*() {
    const token = yield* tokenFor(user)
    const answer = yield* request("/api/runs", {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ agent, user_request, ...extra })
    })
    expect(answer.status, answer.text).toBe(202)
    return answer.json.run_id as string
  })

/** Opens the run's event stream as `user` (bearer header unless `headers` says otherwise). */
const sseAs = (user: string, path: string, headers: Record<string, string> = {}) =>
  Effect.gen(function*() {
    const token = yield* tokenFor(user)
    return yield* openSse(`${yield* serverUrl}${path}`, { authorization: `Bearer ${token}`, ...headers })
  })

/** Resumes once the server's log holds an event of the run with `seq >= seq` (read in process, past the probe). */
const logged = (probe: Probe, user: string, run_id: string, seq: number) =>
  follow(probe.inner!, user, run_id, 0).pipe(
    Stream.filter((item) => item._tag === "Event" && item.event.seq >= seq),
    Stream.take(1),
    Stream.runDrain
  )

/** Resumes once the run has ended in the server's log; its last seq. */
const ended = (probe: Probe, user: string, run_id: string) =>
  Effect.gen(function*() {
    yield* Stream.runDrain(follow(probe.inner!, user, run_id, 0))
    return (yield* probe.inner!.summary(user, run_id)).last_seq
  })

const seqsOf = (client: SseClient) => client.messages.map((m) => Number(m.id))
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i)

/** Every SSE message carries the event: `id` its seq, `event` its type, `data` its JSON. */
const expectWellFormed = (client: SseClient, run_id: string) => {
  for (const m of client.messages) {
    const event = JSON.parse(m.data)
    expect(event).toMatchObject({ run_id, seq: Number(m.id), type: m.event })
  }
}

const sseStreams = Effect.map(request("/ready"), (a) => a.json.components.sse.streams as number)

// ---------------------------------------------------------------------------

const shared = makeProbe()

// the server runs on the real clock, as in production (runs sleep between ticker steps)
layer(serverLayer(shared, { maxConnectionsPerUser: 3 }), { excludeTestServices: true })("HTTP run queries and SSE", (it) => {
  it.effect("GET /api/runs: the user's runs newest first, filtered by thread_id, status, limit; bad parameters are 400 naming them", () =>
    Effect.gen(function*() {
      const user = "list-user"
      const a = yield* startRun(user, "echo", "first", { thread_id: "t-list-a" })
      yield* ended(shared, user, a)
      const b = yield* startRun(user, "refuser", "x", { thread_id: "t-list-b" })
      yield* ended(shared, user, b)
      const c = yield* startRun(user, "ticker", "steps=500 interval_ms=50", { thread_id: "t-list-a" })
      yield* logged(shared, user, c, 1)

      const all = yield* getAs(user, "/api/runs")
      expect(all.status).toBe(200)
      expect(all.headers.get("cache-control")).toBe("no-store")
      expect(all.json.runs.map((r: { run_id: string }) => r.run_id)).toEqual([c, b, a])
      const [running, failed, completed] = all.json.runs
      expect(running).toMatchObject({ run_id: c, thread_id: "t-list-a", agent_name: "ticker", status: "running" })
      expect(running.ended_at).toBeUndefined()
      expect(running.last_seq).toBeGreaterThanOrEqual(1)
      expect(failed).toMatchObject({ run_id: b, thread_id: "t-list-b", agent_name: "refuser", status: "failed", last_seq: 3 })
      expect(completed).toMatchObject({ run_id: a, agent_name: "echo", status: "completed", last_seq: 3 })
      expect(Object.keys(completed).sort()).toEqual(["agent_name", "ended_at", "last_seq", "run_id", "started_at", "status", "thread_id"])

      const ids = (query: string) => Effect.map(getAs(user, `/api/runs?${query}`), (r) => r.json.runs.map((x: { run_id: string }) => x.run_id))
      expect(yield* ids("thread_id=t-list-a")).toEqual([c, a])
      expect(yield* ids("status=completed")).toEqual([a])
      expect(yield* ids("status=running&thread_id=t-list-a")).toEqual([c])
      expect(yield* ids("limit=1")).toEqual([c])
      expect(yield* ids("thread_id=&status=&limit=")).toEqual([c, b, a])

      for (
        const [query, name] of [
          ["limit=0", "limit"],
          ["limit=101", "limit"],
          ["limit=1.5", "limit"],
          ["limit=-1", "limit"],
          ["limit=1&limit=2", "limit"],
          ["status=done", "status"],
          ["thread_id=none", "thread_id"],
          ["thread_id=a%20b", "thread_id"]
        ] as const
      ) {
        const bad = yield* getAs(user, `/api/runs?${query}`)
        expect(bad.status, query).toBe(400)
        expect(bad.json.error.code, query).toBe("INVALID_MESSAGE")
        expect(bad.json.error.message, query).toContain(name)
      }

      expect((yield* getAs("list-other", "/api/runs")).json).toEqual({ runs: [] })
      expect((yield* request("/api/runs")).status).toBe(401)
      // the token in the query is for the event stream only
      expect((yield* request(`/api/runs?token=${yield* tokenFor(user)}`)).status).toBe(401)
      yield* request(`/api/runs/${c}/stop`, { method: "POST", headers: { authorization: `Bearer ${yield* tokenFor(user)}` } })
      yield* ended(shared, user, c)
    }))

  it.effect("GET /api/runs/{run_id}: the run's entry; another user's run and an unknown run are the same 404", () =>
    Effect.gen(function*() {
      const run = yield* startRun("get-user", "calculator", "6*7")
      yield* ended(shared, "get-user", run)
      const got = yield* getAs("get-user", `/api/runs/${run}`)
      expect(got.status).toBe(200)
      expect(got.headers.get("cache-control")).toBe("no-store")
      const listed = (yield* getAs("get-user", "/api/runs")).json.runs.find((r: { run_id: string }) => r.run_id === run)
      expect(got.json).toEqual(listed)
      expect(got.json).toMatchObject({ run_id: run, agent_name: "calculator", status: "completed", last_seq: 5 })

      const foreign = yield* getAs("get-other", `/api/runs/${run}`)
      const unknown = yield* getAs("get-user", "/api/runs/run_0000")
      expect(foreign.status).toBe(404)
      expect(unknown.status).toBe(404)
      expect(foreign.json).toEqual({ error: { code: "RUN_NOT_FOUND", message: `no run "${run}"` } })
      expect(unknown.json).toEqual({ error: { code: "RUN_NOT_FOUND", message: `no run "run_0000"` } })
      expect((yield* request(`/api/runs/${run}`)).status).toBe(401)
    }))

  it.effect("GET /api/runs/{run_id}/events: the retained events as a JSON array, at most 1000 a page, paged by after_seq", () =>
    Effect.gen(function*() {
      const user = "json-user"
      const run = yield* startRun(user, "ticker", "steps=1200 interval_ms=0")
      const n = yield* ended(shared, user, run)
      expect(n).toBe(1202)

      const first = yield* getAs(user, `/api/runs/${run}/events`)
      expect(first.status).toBe(200)
      expect(first.headers.get("content-type")).toContain("application/json")
      expect(first.headers.get("agentwire-last-seq")).toBe("1202")
      expect(first.headers.get("agentwire-run-status")).toBe("completed")
      expect(first.json.map((e: { seq: number }) => e.seq)).toEqual(range(1, 1000))
      expect(first.json[0]).toMatchObject({ type: "agent_started", run_id: run, user_id: user })
      expect(first.headers.get("link")).toBe(`</api/runs/${run}/events?after_seq=1000>; rel="next"`)

      const second = yield* getAs(user, `/api/runs/${run}/events?after_seq=1000`)
      expect(second.json.map((e: { seq: number }) => e.seq)).toEqual(range(1001, 1202))
      expect(second.json.at(-1)).toMatchObject({ type: "agent_completed", status: "completed", depth: 0 })
      expect(second.headers.get("link")).toBeNull()
      expect((yield* getAs(user, `/api/runs/${run}/events?after_seq=1202`)).json).toEqual([])

      const beyond = yield* getAs(user, `/api/runs/${run}/events?after_seq=1203`)
      expect(beyond.status).toBe(400)
      expect(beyond.json.error).toMatchObject({ code: "INVALID_MESSAGE", last_seq: 1202 })
      expect(beyond.json.error.message).toContain("after_seq")
      for (const value of ["-1", "abc", "1e3", "0x10", " 1", "99999999999999999"]) {
        const bad = yield* getAs(user, `/api/runs/${run}/events?after_seq=${encodeURIComponent(value)}`)
        expect(bad.status, value).toBe(400)
        expect(bad.json.error.message, value).toContain("after_seq")
      }
      expect((yield* getAs("json-other", `/api/runs/${run}/events`)).json).toEqual({ error: { code: "RUN_NOT_FOUND", message: `no run "${run}"` } })
      expect((yield* getAs(user, "/api/runs/run_0000/events")).status).toBe(404)
      expect((yield* request(`/api/runs/${run}/events`)).status).toBe(401)
    }))

  it.effect("SSE: replays what the log holds, then follows live until the run's last event, each seq once and in order; then the response ends", () =>
    Effect.gen(function*() {
      const user = "sse-user"
      const run = yield* startRun(user, "ticker", "steps=60 interval_ms=20")
      // part of the run is in the log before the stream opens: replay, then live
      yield* logged(shared, user, run, 10)
      const client = yield* sseAs(user, `/api/runs/${run}/events`)
      expect(client.status).toBe(200)
      expect(client.headers["content-type"]).toBe("text/event-stream; charset=utf-8")
      expect(client.headers["cache-control"]).toBe("no-store")
      yield* client.ended
      expect(seqsOf(client)).toEqual(range(1, 62))
      expectWellFormed(client, run)
      expect(client.messages[0]!.event).toBe("agent_started")
      expect(client.messages.at(-1)).toMatchObject({ event: "agent_completed", id: "62" })
      expect(client.comments[0]).toBe("ok")
    }))

  it.effect("SSE: Last-Event-ID resumes mid-run and wins over after_seq; the two streams together hold 1..n once each, in order", () =>
    Effect.gen(function*() {
      const user = "resume-user"
      const run = yield* startRun(user, "ticker", "steps=40 interval_ms=20")
      const first = yield* sseAs(user, `/api/runs/${run}/events`)
      yield* first.until(() => first.messages.length >= 8, "8 messages")
      first.close()
      const lastSeen = first.messages.at(-1)!.id!
      const second = yield* sseAs(user, `/api/runs/${run}/events?after_seq=0`, { "last-event-id": lastSeen })
      expect(second.status).toBe(200)
      yield* second.ended
      expect(second.messages[0]!.id).toBe(String(Number(lastSeen) + 1))
      expect([...seqsOf(first), ...seqsOf(second)]).toEqual(range(1, 42))
      expectWellFormed(second, run)
    }))

  it.effect("SSE: ?token= authenticates the stream (EventSource cannot send headers); a bad one is 401; another user's is 404", () =>
    Effect.gen(function*() {
      const user = "query-user"
      const run = yield* startRun(user, "echo", "via the query")
      yield* ended(shared, user, run)
      const url = yield* serverUrl
      const token = yield* tokenFor(user)
      const viaQuery = yield* openSse(`${url}/api/runs/${run}/events?token=${token}`)
      expect(viaQuery.status).toBe(200)
      yield* viaQuery.ended
      expect(seqsOf(viaQuery)).toEqual([1, 2, 3])

      const bad = yield* openSse(`${url}/api/runs/${run}/events?token=not-a-jwt`)
      yield* bad.ended
      expect(bad.status).toBe(401)
      expect(JSON.parse(bad.body()).error.code).toBe("UNAUTHORIZED")
      const none = yield* openSse(`${url}/api/runs/${run}/events`)
      expect(none.status).toBe(401)
      const foreign = yield* openSse(`${url}/api/runs/${run}/events?token=${yield* tokenFor("query-other")}`)
      yield* foreign.ended
      expect(foreign.status).toBe(404)
      expect(JSON.parse(foreign.body())).toEqual({ error: { code: "RUN_NOT_FOUND", message: `no run "${run}"` } })
      // the JSON form of the same endpoint takes it too; the run's entry does not
      expect((yield* request(`/api/runs/${run}/events?token=${token}`)).json).toHaveLength(3)
      expect((yield* request(`/api/runs/${run}?token=${token}`)).status).toBe(401)
    }))

  it.effect("SSE: another user's run is 404 like an unknown one; nothing left of an ended run is 204; a bad Last-Event-ID is 400 naming it", () =>
    Effect.gen(function*() {
      const user = "owner-user"
      const run = yield* startRun(user, "echo", "mine")
      yield* ended(shared, user, run)
      const foreign = yield* sseAs("owner-other", `/api/runs/${run}/events`)
      const unknown = yield* sseAs(user, "/api/runs/run_0000/events")
      yield* foreign.ended
      yield* unknown.ended
      expect([foreign.status, unknown.status]).toEqual([404, 404])
      expect(JSON.parse(foreign.body()).error.code).toBe("RUN_NOT_FOUND")
      expect(foreign.messages).toEqual([])

      // EventSource reconnects after the end with the last id: 204 tells it to stop
      const done = yield* sseAs(user, `/api/runs/${run}/events`, { "last-event-id": "3" })
      expect(done.status).toBe(204)
      for (const id of ["4", "x", "-1"]) {
        const bad = yield* sseAs(user, `/api/runs/${run}/events?after_seq=0`, { "last-event-id": id })
        yield* bad.ended
        expect(bad.status, id).toBe(400)
        expect(JSON.parse(bad.body()).error.message, id).toContain("Last-Event-ID")
      }
      // after_seq counts when there is no Last-Event-ID
      const fromTwo = yield* sseAs(user, `/api/runs/${run}/events?after_seq=2`)
      yield* fromTwo.ended
      expect(seqsOf(fromTwo)).toEqual([3])
    }))

  it.effect("SSE heartbeat: while no event comes for sseHeartbeatMs, the stream gets a ': keepalive' comment", () =>
    Effect.gen(function*() {
      const user = "beat-user"
      const run = yield* startRun(user, "ticker", "steps=3 interval_ms=700")
      const client = yield* sseAs(user, `/api/runs/${run}/events`)
      yield* client.until(() => client.comments.includes("keepalive"), "a keepalive comment")
      // it came while the run was still going
      expect(client.messages.length).toBeLessThan(5)
      yield* client.ended
      expect(seqsOf(client)).toEqual([1, 2, 3, 4, 5])
    }))

  it.effect("SSE streams per user are capped (maxConnectionsPerUser): one more is 429 RATE_LIMITED; a closed one frees its place", () =>
    Effect.gen(function*() {
      const user = "cap-user"
      const run = yield* startRun(user, "ticker", "steps=400 interval_ms=50")
      const open = [
        yield* sseAs(user, `/api/runs/${run}/events`),
        yield* sseAs(user, `/api/runs/${run}/events`),
        yield* sseAs(user, `/api/runs/${run}/events`)
      ]
      expect(open.map((c) => c.status)).toEqual([200, 200, 200])
      const refused = yield* sseAs(user, `/api/runs/${run}/events`)
      yield* refused.ended
      expect(refused.status).toBe(429)
      expect(refused.headers["retry-after"]).toBe("1")
      expect(JSON.parse(refused.body()).error.code).toBe("RATE_LIMITED")
      // another user is not affected
      expect((yield* sseAs("cap-other", `/api/runs/${run}/events`)).status).toBe(404)

      open[0]!.close()
      // the place is freed when the server has ended the departed stream (asynchronously)
      const again = yield* sseAs(user, `/api/runs/${run}/events`).pipe(
        Effect.filterOrFail((c) => c.status === 200, () => "still refused"),
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ times: 200 })))
      )
      expect(again.status).toBe(200)
      yield* request(`/api/runs/${run}/stop`, { method: "POST", headers: { authorization: `Bearer ${yield* tokenFor(user)}` } })
      yield* again.ended
      expect(again.messages.at(-1)).toMatchObject({ event: "agent_completed" })
      expect(JSON.parse(again.messages.at(-1)!.data)).toMatchObject({ status: "cancelled" })
    }))

  it.effect("GET /api/agents: the registered agents, default first, and the default's name; 401 without a token; 405 on other methods", () =>
    Effect.gen(function*() {
      const answer = yield* getAs("agents-user", "/api/agents")
      expect(answer.status, answer.text).toBe(200)
      expect(answer.headers.get("cache-control")).toBe("no-store")
      const names = (answer.json.agents as ReadonlyArray<{ name: string }>).map((a) => a.name)
      expect(answer.json.default_agent).toBe("supervisor")
      expect(names[0]).toBe("supervisor")
      expect(names).toEqual(expect.arrayContaining(["calculator", "echo", "ticker"]))
      // registered only when AGENTWIRE_LLM_* is set
      expect(names).not.toContain("assistant")
      expect((yield* request("/api/agents")).status).toBe(401)
      const post = yield* request("/api/agents", { method: "POST" })
      expect(post.status).toBe(405)
      expect(post.headers.get("allow")).toBe("GET")
    }))

  it.effect("405 with Allow on the new paths; GET and POST on /api/runs", () =>
    Effect.gen(function*() {
      for (
        const [method, path, allow] of [
          ["DELETE", "/api/runs", "GET, POST"],
          ["PUT", "/api/runs", "GET, POST"],
          ["POST", "/api/runs/run_1", "GET"],
          ["DELETE", "/api/runs/run_1", "GET"],
          ["POST", "/api/runs/run_1/events", "GET"],
          ["PATCH", "/api/runs/run_1/events", "GET"],
          ["GET", "/api/runs/run_1/stop", "POST"]
        ] as const
      ) {
        const res = yield* request(path, { method })
        expect(res.status, `${method} ${path}`).toBe(405)
        expect(res.headers.get("allow"), `${method} ${path}`).toBe(allow)
      }
    }))
})

// ---------------------------------------------------------------------------

describe("SSE readers that stop reading or leave", () => {
  it.live("a slow reader: the server stops reading the log where the reader stopped (no unbounded buffer); the run completes; on resume the reader gets 1..n", () => {
    const probe = makeProbe()
    return Effect.gen(function*() {
      const user = "slow-user"
      // about 14 MB of SSE: several times what the kernel's socket buffers absorb
      const run = yield* startRun(user, "ticker", "steps=40000 interval_ms=0")
      const client = yield* sseAs(user, `/api/runs/${run}/events`)
      yield* client.until(() => client.messages.length >= 1, "a first message")
      client.pause()
      const n = yield* ended(probe, user, run)
      expect(n).toBe(40002)
      // the run completed without the reader; the server read only as far as the reader's socket took
      const readUpTo = probe.readUpTo.get(run) ?? 0
      expect(readUpTo).toBeLessThan(n)
      client.resume()
      yield* client.ended
      const seqs = seqsOf(client)
      expect(seqs.length).toBe(n)
      expect(seqs.every((seq, i) => seq === i + 1)).toBe(true)
    }).pipe(Effect.provide(serverLayer(probe)), Effect.scoped)
  }, 60_000)

  it.live("a reader that leaves mid-stream: its wait on the log is interrupted and it reads no more; the stream is no longer counted; later streams work", () => {
    const probe = makeProbe()
    return Effect.gen(function*() {
      const user = "leaving-user"
      const run = yield* startRun(user, "ticker", "steps=1000 interval_ms=20")
      const client = yield* sseAs(user, `/api/runs/${run}/events`)
      yield* client.until(() => client.messages.length >= 3, "3 messages")
      yield* probeUntil(probe, () => probe.waiting === 1)
      expect(yield* sseStreams).toBe(1)
      client.close()
      // the server sees the close asynchronously: the stream is uncounted once its response has ended
      const streams = yield* sseStreams.pipe(
        Effect.filterOrFail((count) => count === 0, () => "still counted"),
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ times: 200 })))
      )
      expect(streams).toBe(0)
      expect(probe.waiting).toBe(0)
      const leftAt = probe.readUpTo.get(run) ?? 0
      // the run goes on; its departed reader reads nothing more of it, and waits on nothing
      yield* logged(probe, user, run, leftAt + 20)
      expect(probe.readUpTo.get(run)).toBe(leftAt)
      expect(probe.waiting).toBe(0)
      expect((yield* getAs(user, `/api/runs/${run}`)).json.status).toBe("running")
      yield* request(`/api/runs/${run}/stop`, { method: "POST", headers: { authorization: `Bearer ${yield* tokenFor(user)}` } })

      const next = yield* startRun(user, "echo", "after the leaver")
      const again = yield* sseAs(user, `/api/runs/${next}/events`)
      yield* again.ended
      expect(seqsOf(again)).toEqual([1, 2, 3])
      expect(probe.waiting).toBe(0)
    }).pipe(Effect.provide(serverLayer(probe)), Effect.scoped)
  })
})

describe("retention over HTTP (TestClock)", () => {
  it.effect("past retention a run is 410 RUN_EXPIRED with last_seq (404 for another user); past the tombstone, 404", () => {
    const probe = makeProbe()
    return Effect.gen(function*() {
      const user = "expiry-user"
      const run = yield* startRun(user, "echo", "soon gone")
      yield* ended(probe, user, run)
      expect((yield* getAs(user, `/api/runs/${run}`)).json).toMatchObject({ status: "completed", last_seq: 3 })

      yield* TestClock.adjust("61 seconds")
      const expired = yield* getAs(user, `/api/runs/${run}`)
      expect(expired.status).toBe(410)
      expect(expired.json.error).toMatchObject({ code: "RUN_EXPIRED", run_id: run, last_seq: 3 })
      const events = yield* getAs(user, `/api/runs/${run}/events`)
      expect(events.status).toBe(410)
      expect(events.json.error).toMatchObject({ code: "RUN_EXPIRED", last_seq: 3 })
      const stream = yield* sseAs(user, `/api/runs/${run}/events`)
      yield* stream.ended
      expect(stream.status).toBe(410)
      expect((yield* getAs(user, "/api/runs")).json).toEqual({ runs: [] })
      expect((yield* getAs("expiry-other", `/api/runs/${run}`)).status).toBe(404)

      yield* TestClock.adjust("10 minutes")
      expect((yield* getAs(user, `/api/runs/${run}`)).json.error.code).toBe("RUN_NOT_FOUND")
    }).pipe(
      Effect.provide(serverLayer(probe, {
        runLog: { retentionMs: 60_000, maxEventsPerRun: 1000, maxBytes: 1024 * 1024, maxBytesPerUser: 1024 * 1024, tombstoneMs: 300_000 }
      })),
      Effect.scoped
    )
  })
})
