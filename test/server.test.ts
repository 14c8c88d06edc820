/**
 * Behavioural suite over a real server on port 0 with real WebSocket clients:
 * the protocol as a client sees it (docs/protocol.md).
 */
import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Option, Redacted } from "effect"
import { SignJWT } from "jose"
import * as Agentwire from "../src/Agentwire.ts"
import * as AgentwireConfig from "../src/layers/AgentwireConfig.ts"
import type { ServerMessage } from "../src/protocol/Protocol.ts"
import { AgentwireServer } from "../src/services/AgentwireServer.ts"
import { Auth } from "../src/services/Auth.ts"
import { connect, type ConnectOptions } from "./fixtures/client.ts"
import { QuietLogs, registry } from "./fixtures/runtime.ts"

const SECRET = "behavioural-suite-secret-0123456789"
const MAX_BYTES = 4096

const TestServer = Agentwire.layerServer(registry).pipe(
  Layer.provide(QuietLogs),
  Layer.provideMerge(AgentwireConfig.layer({ port: 0, jwtSecret: Option.some(Redacted.make(SECRET)), maxMessageBytes: MAX_BYTES }))
)

const wsUrl = AgentwireServer.useSync((s) => `${s.url.replace(/^http/, "ws")}/ws`)
const httpUrl = (path: string) => AgentwireServer.useSync((s) => `${s.url}${path}`)
const tokenFor = (user: string) => Auth.use((auth) => auth.issue(user, 300))

/** Connects as `user` with a bearer header and waits for connection_established. */
const connectAs = (user: string, options: ConnectOptions = {}) =>
  Effect.gen(function*() {
    const url = yield* wsUrl
    const token = yield* tokenFor(user)
    const client = yield* connect(url, { headers: { authorization: `Bearer ${token}` }, ...options })
    yield* client.next("connection_established")
    return client
  })

const eventTypes = (events: ReadonlyArray<ServerMessage>) => events.map((e) => e.type)
const seqs = (events: ReadonlyArray<ServerMessage>) => events.map((e) => ("seq" in e ? e.seq : -1))
const httpPost = (path: string, body: string, headers: Record<string, string> = {}) =>
  Effect.flatMap(httpUrl(path), (url) =>
    Effect.promise(async () => {
      const res = await fetch(url, { method: "POST", body, headers: { "content-type": "application/json", ...headers } })
      return { status: res.status, body: await res.json() as Record<string, unknown> }
    }))

// the server runs on the real clock, as in production (runs sleep between ticker steps)
layer(TestServer, { excludeTestServices: true })("agentwire server", (it) => {
  it.effect("connection_established is the first frame, with the user and protocol facts", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("alice")
      expect(client.received[0]).toMatchObject({
        type: "connection_established",
        user_id: "alice",
        protocol_version: 1,
        max_message_bytes: MAX_BYTES
      })
      expect(client.received[0]?.type === "connection_established" && client.received[0].connection_id).toMatch(/^conn_/)
    }))

  it.effect("calculator 2+3*4: every tab of the user gets the whole run in order; another user gets nothing", () =>
    Effect.gen(function*() {
      const tab1 = yield* connectAs("calc-user")
      const tab2 = yield* connectAs("calc-user")
      const other = yield* connectAs("calc-other")
      tab1.send({ type: "start_agent", agent: "calculator", user_request: "2+3*4", request_id: "req-calc-1" })
      const events1 = yield* tab1.runEvents()
      const events2 = yield* tab2.runEvents()
      expect(eventTypes(events1)).toEqual(["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"])
      expect(events2).toEqual(events1)
      expect(seqs(events1)).toEqual([1, 2, 3, 4, 5])
      expect(events1[0]).toMatchObject({ request_id: "req-calc-1", user_id: "calc-user", agent_name: "calculator", depth: 0 })
      expect(events1[3]).toMatchObject({ tool_name: "calculate", success: true, results: { status: "success", output: "14" } })
      const completed = events1[4]
      expect(completed).toMatchObject({ status: "completed" })
      expect(completed?.type === "agent_completed" && completed.final_response).toContain("14")
      // a ping/pong round trip on the other user's socket is a barrier: anything sent to it would have come before
      other.send({ type: "ping" })
      yield* other.next("pong")
      expect(eventTypes(other.received)).toEqual(["connection_established", "pong"])
    }))

  it.effect("a run outlives the tab that started it: the user's other tab still gets every event", () =>
    Effect.gen(function*() {
      const starter = yield* connectAs("two-tabs")
      const watcher = yield* connectAs("two-tabs")
      starter.send({ type: "start_agent", agent: "ticker", user_request: "steps=5 interval_ms=20" })
      yield* watcher.next("agent_thinking", (e) => e.step_number === 1)
      starter.ws.close()
      yield* starter.closed
      const events = yield* watcher.runEvents()
      expect(events.filter((e) => e.type === "agent_thinking")).toHaveLength(5)
      expect(events.at(-1)).toMatchObject({ type: "agent_completed", status: "completed" })
    }))

  it.effect("user_message runs the default supervisor with depth-1 sub-agents", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("chat-user")
      client.send({ type: "user_message", text: "what is (2+3)*4.5?", thread_id: "thread-42" })
      const events = yield* client.runEvents()
      expect(events[0]).toMatchObject({ type: "agent_started", agent_name: "supervisor", depth: 0, thread_id: "thread-42" })
      expect(events.filter((e) => e.type === "agent_started").map((e) => "agent_name" in e && `${e.agent_name}@${e.depth}`))
        .toEqual(["supervisor@0", "triage@1", "calculator@1"])
      expect(seqs(events)).toEqual(events.map((_, i) => i + 1))
      expect(events.at(-1)).toMatchObject({ type: "agent_completed", depth: 0, agent_name: "supervisor" })
    }))

  it.effect("a failed run sends agent_error then agent_completed failed, last", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("fail-user")
      client.send({ type: "start_agent", agent: "ticker", user_request: "steps=abc" })
      const events = yield* client.runEvents()
      expect(eventTypes(events)).toEqual(["agent_started", "agent_error", "agent_completed"])
      expect(events[1]).toMatchObject({ error: { code: "INVALID_INPUT" } })
      expect(events[2]).toMatchObject({ status: "failed" })
    }))

  it.effect("bad frames get an error frame and the connection lives on", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("bad-input")
      client.sendRaw("{not json")
      expect(yield* client.next("error")).toMatchObject({ code: "INVALID_JSON" })
      client.send({ type: "launch_rockets", request_id: "r-1" })
      expect(yield* client.next("error")).toMatchObject({ code: "UNKNOWN_TYPE", request_id: "r-1" })
      client.send({ type: "start_agent", request_id: "r-2" })
      const invalid = yield* client.next("error")
      expect(invalid).toMatchObject({ code: "INVALID_MESSAGE", request_id: "r-2" })
      expect(invalid.message).toContain("user_request")
      client.send({ type: "start_agent", user_request: "x", thread_id: "placeholder" })
      expect((yield* client.next("error")).message).toContain("thread_id")
      client.send({ type: "start_agent", agent: "wizard", user_request: "x", request_id: "r-3" })
      const unknown = yield* client.next("error")
      expect(unknown).toMatchObject({ code: "UNKNOWN_AGENT", request_id: "r-3" })
      expect(unknown.message).toContain("wizard")
      client.sendRaw(Buffer.from([1, 2, 3]))
      expect((yield* client.next("error")).message).toContain("binary")
      client.send({ type: "ping" })
      yield* client.next("pong")
      client.send({ type: "start_agent", agent: "echo", user_request: "still here" })
      const events = yield* client.runEvents()
      expect(events.at(-1)).toMatchObject({ status: "completed", final_response: "still here" })
    }))

  it.effect("a burst of frames is handled completely and in order (backpressure, nothing dropped)", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("burst-user")
      for (let i = 0; i < 500; i++) client.send({ type: "launch", request_id: `r-${i}` })
      for (let i = 0; i < 500; i++) {
        expect(yield* client.next("error")).toMatchObject({ code: "UNKNOWN_TYPE", request_id: `r-${i}` })
      }
    }))

  it.effect("a frame over max_message_bytes closes the connection with 1009", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("big-frame")
      client.send({ type: "user_message", text: "x".repeat(MAX_BYTES + 1) })
      expect((yield* client.closed).code).toBe(1009)
    }))

  it.effect("the handshake is refused with 401 before any socket for a missing, bad or expired token", () =>
    Effect.gen(function*() {
      const url = yield* wsUrl
      const refusal = (u: string, options: ConnectOptions = {}) =>
        Effect.flip(Effect.scoped(connect(u, options)))
      expect((yield* refusal(url)).status).toBe(401)
      expect((yield* refusal(`${url}?token=garbage`)).status).toBe(401)
      const forged = yield* Effect.promise(() =>
        new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("alice").sign(new TextEncoder().encode("x".repeat(40)))
      )
      expect((yield* refusal(url, { headers: { authorization: `Bearer ${forged}` } })).status).toBe(401)
      const expired = yield* Effect.promise(() =>
        new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("alice").setExpirationTime(Math.floor(Date.now() / 1000) - 3600) // beyond the 30 s clock-skew tolerance
          .sign(new TextEncoder().encode(SECRET))
      )
      const refused = yield* refusal(url, { protocols: [`jwt.${expired}`] })
      expect(refused.status).toBe(401)
      expect(refused.body).toContain("expired")
      expect(refused.body).not.toContain(expired)
      const token = yield* tokenFor("alice")
      expect((yield* refusal(url.replace("/ws", "/other"), { headers: { authorization: `Bearer ${token}` } })).status).toBe(404)
    }))

  it.effect("tokens are accepted from the query and from the subprotocol; agentwire.v1 is selected when offered", () =>
    Effect.gen(function*() {
      const url = yield* wsUrl
      const token = yield* tokenFor("proto-user")
      const viaQuery = yield* connect(`${url}?token=${token}`)
      expect(yield* viaQuery.next("connection_established")).toMatchObject({ user_id: "proto-user" })
      const both = yield* connect(url, { protocols: ["agentwire.v1", `jwt.${token}`] })
      expect(both.ws.protocol).toBe("agentwire.v1")
      const jwtOnly = yield* connect(url, { protocols: [`jwt.${token}`] })
      expect(jwtOnly.ws.protocol).toBe(`jwt.${token}`)
      expect(yield* jwtOnly.next("connection_established")).toMatchObject({ user_id: "proto-user" })
    }))

  it.effect("GET /health and GET /ready", () =>
    Effect.gen(function*() {
      const health = yield* Effect.flatMap(httpUrl("/health"), (u) => Effect.promise(() => fetch(u)))
      expect(health.status).toBe(200)
      const ready = yield* Effect.flatMap(httpUrl("/ready"), (u) => Effect.promise(() => fetch(u).then(async (r) => ({ status: r.status, body: await r.json() }))))
      expect(ready.status).toBe(200)
      expect(ready.body).toMatchObject({
        status: "ready",
        components: {
          http: { status: "up" },
          admission: { status: "up" },
          event_loop: { status: "up" },
          bridge: { status: "up" },
          auth: { secret: "configured" }
        }
      })
    }))

  it.effect("POST /api/runs starts a run whose events go to the user's sockets", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("http-user")
      const token = yield* tokenFor("http-user")
      const auth = { authorization: `Bearer ${token}` }
      const accepted = yield* httpPost("/api/runs", JSON.stringify({ agent: "calculator", user_request: "6*7", thread_id: "t-http" }), auth)
      expect(accepted.status).toBe(202)
      expect(accepted.body).toMatchObject({ thread_id: "t-http" })
      const events = yield* client.runEvents(accepted.body.run_id as string)
      expect(events.at(-1)).toMatchObject({ type: "agent_completed", status: "completed" })
      expect(events.at(-1)?.type === "agent_completed" && events.at(-1)).toMatchObject({ final_response: "6*7 = 42" })

      expect((yield* httpPost("/api/runs", JSON.stringify({ user_request: "x" }))).status).toBe(401)
      expect((yield* httpPost("/api/runs", JSON.stringify({ user_request: "x" }), { authorization: "Bearer nope" })).status).toBe(401)
      expect(yield* httpPost("/api/runs", "{oops", auth)).toMatchObject({ status: 400, body: { error: { code: "INVALID_JSON" } } })
      const missing = yield* httpPost("/api/runs", JSON.stringify({ agent: "echo" }), auth)
      expect(missing).toMatchObject({ status: 400, body: { error: { code: "INVALID_MESSAGE" } } })
      expect(JSON.stringify(missing.body)).toContain("user_request")
      expect(yield* httpPost("/api/runs", JSON.stringify({ agent: "wizard", user_request: "x" }), auth))
        .toMatchObject({ status: 404, body: { error: { code: "UNKNOWN_AGENT" } } })
      expect((yield* httpPost("/api/runs", JSON.stringify({ user_request: "x".repeat(MAX_BYTES) }), auth)).status).toBe(413)
      // a chunked body has no Content-Length: its bytes are counted while reading (2-byte characters here)
      const chunked = yield* Effect.flatMap(httpUrl("/api/runs"), (url) =>
        Effect.promise(async () => {
          const half = new TextEncoder().encode(JSON.stringify({ user_request: "é".repeat(MAX_BYTES / 2) }))
          const body = new ReadableStream<Uint8Array>({
            start(controller) {
              controller.enqueue(half.subarray(0, 100))
              controller.enqueue(half.subarray(100))
              controller.close()
            }
          })
          const res = await fetch(url, { method: "POST", body, headers: { ...auth, "content-type": "application/json" }, duplex: "half" } as RequestInit)
          return res.status
        }))
      expect(chunked).toBe(413)
    }))
})
