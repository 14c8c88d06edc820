/**
 * Issue 8: the run lifecycle over real sockets and HTTP — stop, limits,
 * timeouts, idempotent starts — plus the engine-level timeout and rate limit on
 * the TestClock.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Option, Redacted, References } from "effect"
import { TestClock } from "effect/testing"
import WebSocket from "ws"
import { builtinAgents } from "../src/agents/BuiltinAgents.ts"
import * as Agentwire from "../src/Agentwire.ts"
import * as AgentRegistryLayer from "../src/layers/AgentRegistry.ts"
import * as AgentwireConfig from "../src/layers/AgentwireConfig.ts"
import * as RunAdmissionMemory from "../src/layers/RunAdmissionMemory.ts"
import { RecordedEvents } from "../src/layers/WebSocketBridgeRecording.ts"
import type { ServerMessage } from "../src/protocol/Protocol.ts"
import * as Agent from "../src/services/Agent.ts"
import type { AgentwireSettings } from "../src/services/AgentwireConfig.ts"
import { AgentwireServer } from "../src/services/AgentwireServer.ts"
import { Auth } from "../src/services/Auth.ts"
import { ExecutionEngineFactory } from "../src/services/ExecutionEngineFactory.ts"
import { RunAdmission } from "../src/services/RunAdmission.ts"
import * as UserExecutionContext from "../src/services/UserExecutionContext.ts"
import { WebSocketBridge } from "../src/services/WebSocketBridge.ts"
import { type Client, connect } from "./fixtures/client.ts"
import { RecordingRuntime, runInvariants, testAgents } from "./fixtures/runtime.ts"

const SECRET = "lifecycle-suite-secret-0123456789abcdef"

/** Tool finalizers that ran, by run id: a stop must run them. */
const finalized = new Set<string>()

const lifecycleAgents = [
  Agent.make("holder", {
    description: "holds a tool open until stopped; the tool's finalizer records the stop",
    run: (_, ctx) =>
      ctx.tool("hold", {}, Effect.never.pipe(Effect.onInterrupt(() => Effect.sync(() => finalized.add(ctx.run_id))))).pipe(
        Effect.as("never")
      )
  }),
  Agent.make("manager", {
    description: "delegates to holder (depth 1)",
    run: (request, ctx) => ctx.delegate("holder", request)
  })
]

const registry = AgentRegistryLayer.layer([...builtinAgents, ...testAgents, ...lifecycleAgents], { defaultAgent: "supervisor" })

const serverLayer = (settings: Partial<AgentwireSettings> = {}) =>
  Agentwire.layerServer(registry).pipe(
    Layer.provide(Layer.succeed(References.MinimumLogLevel, "Warn")),
    Layer.provideMerge(AgentwireConfig.layer({
      port: 0,
      jwtSecret: Option.some(Redacted.make(SECRET)),
      maxFramesPerSecond: 0,
      shutdownGraceMs: 100,
      ...settings,
      runLimits: { ...AgentwireConfig.DEFAULT_RUN_LIMITS, runStartsPerSecond: 0, ...settings.runLimits }
    }))
  )

const serverUrl = AgentwireServer.useSync((s) => s.url)
const tokenFor = (user: string) => Auth.use((auth) => auth.issue(user, 300))

const connectAs = (user: string) =>
  Effect.gen(function*() {
    const token = yield* tokenFor(user)
    const url = yield* AgentwireServer.useSync((s) => `${s.url.replace(/^http/, "ws")}/ws`)
    const client = yield* connect(url, { headers: { authorization: `Bearer ${token}` } })
    yield* client.next("connection_established")
    return client
  })

/** Sends a start and waits for its `run_accepted`. */
const startRun = (client: Client, agent: string, user_request: string, extra: Record<string, string> = {}) =>
  Effect.gen(function*() {
    const request_id = extra.request_id ?? UserExecutionContext.generateId("req")
    client.send({ type: "start_agent", agent, user_request, ...extra, request_id })
    return yield* client.next("run_accepted", (m) => m.request_id === request_id)
  })

const stop = (client: Client, selector: { run_id?: string; thread_id?: string }) =>
  Effect.gen(function*() {
    const request_id = UserExecutionContext.generateId("req")
    client.send({ type: "stop_agent", ...selector, request_id })
    return yield* client.next("run_stopped", (m) => m.request_id === request_id)
  })

const post = (path: string, user: string, body?: unknown) =>
  Effect.gen(function*() {
    const url = yield* serverUrl
    const token = yield* tokenFor(user)
    return yield* Effect.promise(async () => {
      const res = await fetch(`${url}${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) })
      })
      return { status: res.status, headers: res.headers, body: await res.json() as Record<string, any> }
    })
  })

const terminals = (events: ReadonlyArray<ServerMessage>, run_id: string) =>
  events.filter((m) => m.type === "agent_completed" && m.depth === 0 && m.run_id === run_id)

const typesAt = (events: ReadonlyArray<ServerMessage>) => events.map((e) => `${e.type}@${"depth" in e ? e.depth : "-"}`)

// ---------------------------------------------------------------------------
describe("stop_agent", () => {
  it.live("during a tool: the tool's finalizer runs, the tool call and the run close as the table says, run_stopped follows", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("stopper")
      const accepted = yield* startRun(client, "holder", "hold")
      yield* client.next("tool_executing", (m) => m.run_id === accepted.run_id)
      const stopped = yield* stop(client, { run_id: accepted.run_id })
      expect(stopped.run_ids).toEqual([accepted.run_id])
      expect(finalized.has(accepted.run_id)).toBe(true)
      const events = yield* client.runEvents(accepted.run_id)
      expect(typesAt(events)).toEqual(["agent_started@0", "tool_executing@0", "tool_completed@0", "agent_stopped@0", "agent_completed@0"])
      expect(events[2]).toMatchObject({ success: false, results: { status: "cancelled" } })
      expect(events[3]).toMatchObject({ reason: "user_request" })
      expect(events[4]).toMatchObject({ status: "cancelled" })
      expect(runInvariants(events as never)).toEqual([])
      // run_stopped came after the terminal events
      const order = client.received.map((m) => m.type)
      expect(order.lastIndexOf("agent_completed")).toBeLessThan(order.lastIndexOf("run_stopped"))
    }).pipe(Effect.provide(serverLayer()), Effect.scoped))

  it.live("during a sub-agent: the innermost closes first (tool, sub-agent cancelled), then the root", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("stopper-sub")
      const accepted = yield* startRun(client, "manager", "hold")
      yield* client.next("tool_executing", (m) => m.run_id === accepted.run_id)
      expect((yield* stop(client, { run_id: accepted.run_id })).run_ids).toEqual([accepted.run_id])
      const events = yield* client.runEvents(accepted.run_id)
      expect(typesAt(events)).toEqual([
        "agent_started@0",
        "agent_started@1",
        "tool_executing@1",
        "tool_completed@1",
        "agent_completed@1",
        "agent_stopped@0",
        "agent_completed@0"
      ])
      expect(events[4]).toMatchObject({ status: "cancelled" })
      expect(events[6]).toMatchObject({ status: "cancelled" })
    }).pipe(Effect.provide(serverLayer()), Effect.scoped))

  it.live("before the first event: agent_started, then the stop; after the end, twice, unknown and another user's run: []", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("early")
      const other = yield* connectAs("early-other")
      // start and stop in one burst: the stop is handled right after the start
      client.send({ type: "start_agent", agent: "holder", user_request: "x", request_id: "burst" })
      client.send({ type: "stop_agent", request_id: "burst-stop" })
      const stopped = yield* client.next("run_stopped", (m) => m.request_id === "burst-stop")
      const accepted = yield* client.next("run_accepted", (m) => m.request_id === "burst")
      expect(stopped.run_ids).toEqual([accepted.run_id])
      const events = yield* client.runEvents(accepted.run_id)
      expect(events[0]?.type).toBe("agent_started")
      expect(terminals(events, accepted.run_id)).toHaveLength(1)
      // after the end, and twice
      expect((yield* stop(client, { run_id: accepted.run_id })).run_ids).toEqual([])
      // another user's run is untouched and indistinguishable from an unknown one
      const theirs = yield* startRun(other, "holder", "x")
      expect((yield* stop(client, { run_id: theirs.run_id })).run_ids).toEqual([])
      expect((yield* stop(client, { run_id: "run_unknown" })).run_ids).toEqual([])
      expect((yield* stop(client, {})).run_ids).toEqual([])
      other.send({ type: "ping" })
      yield* other.next("pong")
      expect(terminals(other.received, theirs.run_id)).toHaveLength(0)
      expect((yield* stop(other, {})).run_ids).toEqual([theirs.run_id])
    }).pipe(Effect.provide(serverLayer()), Effect.scoped))

  it.live("by thread and all: exactly the selected runs; a closed socket does not stop its runs", () =>
    Effect.gen(function*() {
      const tab = yield* connectAs("threads")
      const a1 = yield* startRun(tab, "holder", "x", { thread_id: "t-a" })
      const a2 = yield* startRun(tab, "holder", "x", { thread_id: "t-a" })
      const b = yield* startRun(tab, "holder", "x", { thread_id: "t-b" })
      const stoppedA = yield* stop(tab, { thread_id: "t-a" })
      expect([...stoppedA.run_ids].sort()).toEqual([a1.run_id, a2.run_id].sort())
      // closing the tab does not stop run b: another tab stops it
      tab.ws.close()
      yield* tab.closed
      const tab2 = yield* connectAs("threads")
      expect((yield* stop(tab2, {})).run_ids).toEqual([b.run_id])
    }).pipe(Effect.provide(serverLayer()), Effect.scoped))

  it.live("a stop racing the run's own end yields exactly one terminal event (200 iterations)", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("racer")
      for (let i = 0; i < 200; i++) {
        client.send({ type: "start_agent", agent: "echo", user_request: `hi ${i}`, request_id: `race-${i}` })
        client.send({ type: "stop_agent", request_id: `race-stop-${i}` })
        const stopped = yield* client.next("run_stopped", (m) => m.request_id === `race-stop-${i}`)
        const accepted = yield* client.next("run_accepted", (m) => m.request_id === `race-${i}`)
        const events = yield* client.runEvents(accepted.run_id)
        expect(terminals(client.received, accepted.run_id)).toHaveLength(1)
        expect(runInvariants(events as never)).toEqual([])
        const status = events.at(-1)?.type === "agent_completed" ? (events.at(-1) as { status: string }).status : "?"
        // listed exactly when the run ended as stopped
        expect(stopped.run_ids.includes(accepted.run_id)).toBe(status === "cancelled")
      }
    }).pipe(Effect.provide(serverLayer()), Effect.scoped), 60_000)

  it.live("POST /api/runs/{id}/stop: 200 with the run for the owner's active run, [] once ended, 404 for unknown or foreign runs", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("http-stopper")
      const accepted = yield* startRun(client, "holder", "x")
      expect(yield* post(`/api/runs/${accepted.run_id}/stop`, "someone-else")).toMatchObject({ status: 404, body: { error: { code: "RUN_NOT_FOUND" } } })
      expect(yield* post(`/api/runs/${accepted.run_id}/stop`, "http-stopper")).toMatchObject({ status: 200, body: { run_ids: [accepted.run_id] } })
      expect(terminals(yield* client.runEvents(accepted.run_id), accepted.run_id)).toHaveLength(1)
      expect(yield* post(`/api/runs/${accepted.run_id}/stop`, "http-stopper")).toMatchObject({ status: 200, body: { run_ids: [] } })
      expect((yield* post("/api/runs/run_nope/stop", "http-stopper")).status).toBe(404)
    }).pipe(Effect.provide(serverLayer()), Effect.scoped))
})

// ---------------------------------------------------------------------------
describe("limits", () => {
  it.live("runs per user: RUN_LIMIT_EXCEEDED on the socket, 429 over HTTP; a stop frees the slot at once", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("limited")
      const first = yield* startRun(client, "holder", "x")
      yield* startRun(client, "holder", "x")
      client.send({ type: "start_agent", agent: "holder", user_request: "x", request_id: "third" })
      expect(yield* client.next("error", (e) => e.request_id === "third")).toMatchObject({ code: "RUN_LIMIT_EXCEEDED" })
      expect(yield* post("/api/runs", "limited", { agent: "holder", user_request: "x" })).toMatchObject({
        status: 429,
        body: { error: { code: "RUN_LIMIT_EXCEEDED" } }
      })
      // another user is not affected
      expect((yield* post("/api/runs", "not-limited", { agent: "echo", user_request: "x" })).status).toBe(202)
      yield* stop(client, { run_id: first.run_id })
      yield* startRun(client, "holder", "x", { request_id: "after-stop" })
    }).pipe(Effect.provide(serverLayer({ runLimits: { ...AgentwireConfig.DEFAULT_RUN_LIMITS, maxRunsPerUser: 2 } })), Effect.scoped))

  it.live("runs per process: SERVER_BUSY on the socket, 503 with Retry-After over HTTP", () =>
    Effect.gen(function*() {
      const a = yield* connectAs("busy-a")
      yield* startRun(a, "holder", "x")
      const b = yield* connectAs("busy-b")
      b.send({ type: "start_agent", agent: "echo", user_request: "x", request_id: "busy" })
      expect(yield* b.next("error", (e) => e.request_id === "busy")).toMatchObject({ code: "SERVER_BUSY" })
      const res = yield* post("/api/runs", "busy-b", { agent: "echo", user_request: "x" })
      expect(res).toMatchObject({ status: 503, body: { error: { code: "SERVER_BUSY" } } })
      expect(Number(res.headers.get("retry-after"))).toBeGreaterThan(0)
    }).pipe(Effect.provide(serverLayer({ runLimits: { ...AgentwireConfig.DEFAULT_RUN_LIMITS, maxRuns: 1 } })), Effect.scoped))

  it.live("run starts per user: RATE_LIMITED with retry_after_ms once the burst is spent; other frames are still answered", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("hasty")
      yield* startRun(client, "echo", "1")
      yield* startRun(client, "echo", "2")
      client.send({ type: "start_agent", agent: "echo", user_request: "3", request_id: "third" })
      const refused = yield* client.next("error", (e) => e.request_id === "third")
      expect(refused).toMatchObject({ code: "RATE_LIMITED" })
      expect(refused.retry_after_ms).toBeGreaterThan(0)
      expect(refused.retry_after_ms).toBeLessThanOrEqual(1000)
      client.send({ type: "ping" })
      yield* client.next("pong")
      expect((yield* post("/api/runs", "hasty", { agent: "echo", user_request: "4" })).status).toBe(429)
    }).pipe(
      Effect.provide(serverLayer({ runLimits: { ...AgentwireConfig.DEFAULT_RUN_LIMITS, runStartsPerSecond: 1, runStartBurst: 2 } })),
      Effect.scoped
    ))

  it.live("connections per user: a new connection over the limit is accepted and the oldest is closed with 4009", () =>
    Effect.gen(function*() {
      const first = yield* connectAs("tabby")
      const second = yield* connectAs("tabby")
      const third = yield* connectAs("tabby")
      expect(yield* first.closed).toMatchObject({ code: 4009 })
      expect(second.ws.readyState).toBe(WebSocket.OPEN)
      third.send({ type: "ping" })
      yield* third.next("pong")
    }).pipe(Effect.provide(serverLayer({ maxConnectionsPerUser: 2 })), Effect.scoped))

  it.live("a client sending faster than its frame budget is slowed, never refused: every ping is answered", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("chatty")
      for (let i = 0; i < 300; i++) client.send({ type: "ping" })
      yield* client.count("pong", 300)
      expect(client.received.some((m) => m.type === "error")).toBe(false)
    }).pipe(Effect.provide(serverLayer({ maxFramesPerSecond: 500 })), Effect.scoped))
})

// ---------------------------------------------------------------------------
describe("idempotent starts", () => {
  it.live("the same request_id sent concurrently on two tabs starts one run; both get its run_accepted", () =>
    Effect.gen(function*() {
      const tab1 = yield* connectAs("idem")
      const tab2 = yield* connectAs("idem")
      const start = { type: "start_agent", agent: "ticker", user_request: "steps=3 interval_ms=10", request_id: "same-req" }
      tab1.send(start)
      tab2.send(start)
      const a = yield* tab1.next("run_accepted")
      const b = yield* tab2.next("run_accepted")
      expect(a.run_id).toBe(b.run_id)
      expect([a.duplicate ?? false, b.duplicate ?? false].sort()).toEqual([false, true])
      const events = yield* tab1.runEvents(a.run_id)
      expect(events.filter((e) => e.type === "agent_started" && e.depth === 0)).toHaveLength(1)
      // a different payload under the same request_id is a conflict
      tab1.send({ ...start, user_request: "steps=4" })
      expect(yield* tab1.next("error", (e) => e.request_id === "same-req")).toMatchObject({ code: "REQUEST_ID_CONFLICT" })
    }).pipe(Effect.provide(serverLayer()), Effect.scoped))

  it.live("over HTTP: 202, then 200 with the same body, then 409 for another payload", () =>
    Effect.gen(function*() {
      const body = { agent: "echo", user_request: "hello", request_id: "http-idem" }
      const first = yield* post("/api/runs", "idem-http", body)
      expect(first.status).toBe(202)
      const again = yield* post("/api/runs", "idem-http", body)
      expect(again).toMatchObject({ status: 200, body: first.body })
      expect(yield* post("/api/runs", "idem-http", { ...body, user_request: "other" })).toMatchObject({
        status: 409,
        body: { error: { code: "REQUEST_ID_CONFLICT" } }
      })
    }).pipe(Effect.provide(serverLayer()), Effect.scoped))
})

// ---------------------------------------------------------------------------
describe("isolation under load", () => {
  it.live("50 users x 2 connections x 4 concurrent runs, random stops and disconnects: only own events, one terminal per run, no leaks", () =>
    Effect.gen(function*() {
      const USERS = 50
      let seed = 7
      const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31
      const users = Array.from({ length: USERS }, (_, i) => `load-${i}`)
      const tabs = yield* Effect.forEach(users, (user) => Effect.all([connectAs(user), connectAs(user)]), { concurrency: 10 })
      const started = yield* Effect.forEach(users, (user, u) =>
        Effect.forEach([0, 1, 2, 3], (r) => startRun(tabs[u]![r % 2]!, "ticker", `steps=20 interval_ms=${5 + r}`), { concurrency: 4 }), {
        concurrency: 10
      })
      // random stops and disconnects while runs are in flight
      for (const [u, [tab1, tab2]] of tabs.entries()) {
        if (random() < 0.3) tab2.ws.close()
        if (random() < 0.3) yield* stop(tab1, { run_id: started[u]![0]!.run_id })
      }
      for (const [u, [tab1]] of tabs.entries()) {
        for (const accepted of started[u]!) {
          const events = yield* tab1.runEvents(accepted.run_id)
          expect(runInvariants(events as never)).toEqual([])
          expect(terminals(tab1.received, accepted.run_id)).toHaveLength(1)
        }
        expect(tab1.received.every((m) => !("user_id" in m) || m.user_id === users[u])).toBe(true)
      }
      for (const [u, [, tab2]] of tabs.entries()) {
        expect(tab2.received.every((m) => !("user_id" in m) || m.user_id === users[u])).toBe(true)
      }
      const engines = yield* ExecutionEngineFactory
      expect(yield* engines.activeRuns).toBe(0)
      expect(yield* engines.liveEngines).toBe(0)
      expect(yield* RunAdmission.use((a) => a.activeRuns())).toBe(0)
      for (const [tab1, tab2] of tabs) {
        tab1.ws.close()
        tab2.ws.close()
        yield* tab1.closed
        yield* tab2.closed
      }
      // connection fibers unregister when their sockets close; poll the count (no event for it)
      const bridge = yield* WebSocketBridge
      yield* bridge.connectionCount().pipe(
        Effect.flatMap((n) => (n === 0 ? Effect.void : Effect.fail("open" as const))),
        Effect.retry({ times: 100, schedule: undefined })
      )
    }).pipe(Effect.provide(serverLayer({ maxConnectionsPerUser: 2 })), Effect.scoped), 60_000)
})

// ---------------------------------------------------------------------------
describe("on the TestClock", () => {
  it.effect("a run over AGENTWIRE_RUN_TIMEOUT_MS ends with agent_error RUN_TIMEOUT and agent_completed timed_out", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const recorded = yield* RecordedEvents
      const context = yield* UserExecutionContext.make({ user_id: "slowpoke" })
      const handle = yield* engines.start(context, "ticker", "steps=5 interval_ms=60000")
      yield* recorded.waitFor((e) => e.run_id === context.run_id && e.type === "agent_thinking")
      const waiting = yield* Effect.forkChild(handle.await)
      yield* TestClock.adjust("1 second")
      const outcome = yield* Fiber.join(waiting)
      expect(outcome).toMatchObject({ status: "timed_out", error: { code: "RUN_TIMEOUT" } })
      const events = yield* recorded.ofRun(context.run_id)
      expect(events.slice(-2).map((e) => e.type)).toEqual(["agent_error", "agent_completed"])
      expect(events.at(-1)).toMatchObject({ status: "timed_out" })
      expect(runInvariants(events)).toEqual([])
      expect(yield* engines.activeRuns).toBe(0)
    }).pipe(Effect.provide(RecordingRuntime.pipe(Layer.provide(AgentwireConfig.layer({ runTimeoutMs: 1000 }))))))

  it.effect("an ended run is remembered small: a duplicate's outcome keeps at most 256 characters of a 60 KB answer (review finding)", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const context = yield* UserExecutionContext.make({ user_id: "big", request_id: "big-1" })
      const big = "y".repeat(60_000)
      const first = yield* engines.start(context, "echo", big, { idempotent: true })
      expect((yield* first.await).final_response.length).toBeGreaterThanOrEqual(60_000)
      const again = yield* engines.start({ ...context, run_id: "run_again" }, "echo", big, { idempotent: true })
      expect(again.duplicate).toBe(true)
      expect((yield* again.await).final_response.length).toBeLessThanOrEqual(257)
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("the start budget refills at the configured rate; refused and repeated starts spend nothing", () =>
    Effect.gen(function*() {
      const admission = yield* RunAdmission
      const admit = (user_id: string, request_id?: string) =>
        Effect.flatMap(UserExecutionContext.make({ user_id, request_id }), (context) =>
          admission.admit(context, "echo", {
            rateLimited: true,
            ...(request_id === undefined ? {} : { idempotency: { fingerprint: "p", threadGiven: false } })
          }))
      yield* admit("u", "first")
      yield* admit("u")
      const refused = yield* Effect.flip(admit("u"))
      expect(refused).toMatchObject({ reason: "rate_limited", retry_after_ms: 500 })
      // a repeat of an accepted request_id is its duplicate, never rate-limited (review finding)
      expect((yield* admit("u", "first"))._tag).toBe("Duplicate")
      yield* TestClock.adjust("499 millis")
      expect((yield* Effect.flip(admit("u"))).reason).toBe("rate_limited")
      yield* TestClock.adjust("1 millis")
      yield* admit("u")
      // another user has a budget of their own
      yield* admit("v")
    }).pipe(Effect.provide(RunAdmissionMemory.layer({ ...AgentwireConfig.DEFAULT_RUN_LIMITS, maxRunsPerUser: 100, runStartsPerSecond: 2, runStartBurst: 2 }))))

  it.effect("a start refused for the run limit spends no start budget (review finding)", () =>
    Effect.gen(function*() {
      const admission = yield* RunAdmission
      const admit = Effect.flatMap(UserExecutionContext.make({ user_id: "u" }), (context) => admission.admit(context, "echo", { rateLimited: true }))
      const first = yield* admit
      for (let i = 0; i < 9; i++) expect((yield* Effect.flip(admit)).reason).toBe("run_limit")
      if (first._tag === "Admitted") yield* first.release
      expect((yield* admit)._tag).toBe("Admitted")
    }).pipe(Effect.provide(RunAdmissionMemory.layer({ ...AgentwireConfig.DEFAULT_RUN_LIMITS, maxRunsPerUser: 1, runStartsPerSecond: 1, runStartBurst: 2 }))))

  it.effect("a request_id is remembered for the idempotency window, then forgotten; a retry naming the original thread is its duplicate", () =>
    Effect.gen(function*() {
      const admission = yield* RunAdmission
      const context = yield* UserExecutionContext.make({ user_id: "u", request_id: "r-1" })
      const idem = (threadGiven: boolean) => ({ idempotency: { fingerprint: "payload", threadGiven } })
      const first = yield* admission.admit(context, "echo", idem(false))
      expect(first._tag).toBe("Admitted")
      if (first._tag === "Admitted") yield* first.release
      expect((yield* admission.admit({ ...context, run_id: "run_2", thread_id: "t-other" }, "echo", idem(false)))._tag).toBe("Duplicate")
      // the retry names the thread its run_accepted gave (review finding)
      expect((yield* admission.admit({ ...context, run_id: "run_2" }, "echo", idem(true)))._tag).toBe("Duplicate")
      expect((yield* Effect.flip(admission.admit({ ...context, run_id: "run_2", thread_id: "t-other" }, "echo", idem(true)))).reason)
        .toBe("request_id_conflict")
      yield* TestClock.adjust("60 seconds")
      expect((yield* admission.admit({ ...context, run_id: "run_3" }, "echo", idem(false)))._tag).toBe("Admitted")
    }).pipe(Effect.provide(RunAdmissionMemory.layer({ ...AgentwireConfig.DEFAULT_RUN_LIMITS, idempotencyWindowMs: 60_000 }))))
})
