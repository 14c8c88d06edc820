/**
 * The thread API over a real server (SQLite history in a temp dir) with real
 * WebSocket and HTTP clients: recording from runs, owner only, paging, delete,
 * erase-my-data (checked in the database file itself), THREAD_NOT_FOUND for a
 * start on another user's thread, /ready.
 */
import { afterAll, expect, layer } from "@effect/vitest"
import { Effect, Layer, Option, Redacted } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DatabaseSync } from "node:sqlite"
import * as Agentwire from "../src/Agentwire.ts"
import * as AgentwireConfig from "../src/layers/AgentwireConfig.ts"
import * as History from "../src/layers/History.ts"
import { AgentwireServer } from "../src/services/AgentwireServer.ts"
import { Auth } from "../src/services/Auth.ts"
import { ConversationStore } from "../src/services/ConversationStore.ts"
import { connect } from "./fixtures/client.ts"
import { QuietLogs, registry } from "./fixtures/runtime.ts"

const SECRET = "threads-suite-secret-0123456789-abcdef"
const dataDir = mkdtempSync(join(tmpdir(), "agentwire-threads-"))
afterAll(() => rmSync(dataDir, { recursive: true, force: true }))

const TestServer = Agentwire.layerServer(registry).pipe(
  Layer.provide(QuietLogs),
  Layer.provideMerge(History.layerSqlite(dataDir)),
  Layer.provideMerge(AgentwireConfig.layer({ port: 0, jwtSecret: Option.some(Redacted.make(SECRET)) }))
)

const tokenFor = (user: string) => Auth.use((auth) => auth.issue(user, 300))

const connectAs = (user: string) =>
  Effect.gen(function*() {
    const url = yield* AgentwireServer.useSync((s) => `${s.url.replace(/^http/, "ws")}/ws`)
    const client = yield* connect(url, { headers: { authorization: `Bearer ${yield* tokenFor(user)}` } })
    yield* client.next("connection_established")
    return client
  })

const http = (method: string, path: string, user: string | undefined) =>
  Effect.gen(function*() {
    const url = yield* AgentwireServer.useSync((s) => `${s.url}${path}`)
    const headers: Record<string, string> = user === undefined ? {} : { authorization: `Bearer ${yield* tokenFor(user)}` }
    return yield* Effect.promise(async () => {
      const res = await fetch(url, { method, headers })
      return { status: res.status, body: await res.json() as Record<string, any> }
    })
  })

type Client = Effect.Success<ReturnType<typeof connectAs>>

/** Runs `echo` on `thread_id` to its end; returns its run id. */
const echoOn = (client: Client, thread_id: string, text: string) =>
  Effect.gen(function*() {
    const request_id = `req-${thread_id}-${text.length}-${Math.random().toString(36).slice(2)}`
    client.send({ type: "start_agent", agent: "echo", user_request: text, thread_id, request_id })
    const accepted = yield* client.next("run_accepted", (m) => m.request_id === request_id)
    yield* client.next("agent_completed", (m) => m.run_id === accepted.run_id && m.depth === 0)
    return accepted.run_id
  })

const rowsOf = (user_id: string) => {
  const db = new DatabaseSync(join(dataDir, History.SQLITE_FILE), { readOnly: true })
  try {
    return ["agentwire_threads", "agentwire_messages", "agentwire_runs"].map((table) =>
      Number((db.prepare(`SELECT COUNT(*) AS n FROM ${table} WHERE user_id = ?`).get(user_id) as { n: number }).n)
    )
  } finally {
    db.close()
  }
}

layer(TestServer, { excludeTestServices: true })("threads", (it) => {
  it.effect("a run is recorded: list_threads and get_thread return the thread, its request, answer and run", () =>
    Effect.gen(function*() {
      const alice = yield* connectAs("alice-1")
      const run_id = yield* echoOn(alice, "t-one", "hello there\nsecond line")
      alice.send({ type: "list_threads", request_id: "l1" })
      const list = yield* alice.next("threads", (m) => m.request_id === "l1")
      expect(list.threads).toHaveLength(1)
      expect(list.threads[0]).toMatchObject({ thread_id: "t-one", title: "hello there", last_status: "completed" })
      expect(list.next_before).toBeUndefined()
      alice.send({ type: "get_thread", thread_id: "t-one", request_id: "g1" })
      const thread = yield* alice.next("thread", (m) => m.request_id === "g1")
      expect(thread.messages.map((m) => [m.role, m.content, m.run_id])).toEqual([
        ["user", "hello there\nsecond line", run_id],
        ["assistant", "hello there\nsecond line", run_id]
      ])
      expect(thread.runs).toHaveLength(1)
      expect(thread.runs[0]).toMatchObject({ run_id, agent_name: "echo", status: "completed", final_response: "hello there\nsecond line" })
      expect(Date.parse(thread.runs[0]!.ended_at!)).toBeGreaterThanOrEqual(Date.parse(thread.runs[0]!.started_at))
      // the same over HTTP
      const listed = yield* http("GET", "/api/threads", "alice-1")
      expect(listed.status).toBe(200)
      expect(listed.body.threads.map((t: { thread_id: string }) => t.thread_id)).toEqual(["t-one"])
      const got = yield* http("GET", "/api/threads/t-one", "alice-1")
      expect(got.status).toBe(200)
      expect(got.body.messages).toHaveLength(2)
      // a failed run is recorded with its error code and only its request
      alice.send({ type: "start_agent", agent: "refuser", user_request: "please", thread_id: "t-one", request_id: "r2" })
      const refused = yield* alice.next("run_accepted", (m) => m.request_id === "r2")
      yield* alice.next("agent_completed", (m) => m.run_id === refused.run_id && m.depth === 0)
      alice.send({ type: "get_thread", thread_id: "t-one", request_id: "g2" })
      const after = yield* alice.next("thread", (m) => m.request_id === "g2")
      expect(after.last_status).toBe("failed")
      expect(after.runs[1]).toMatchObject({ run_id: refused.run_id, status: "failed", error_code: "REFUSED" })
      expect(after.messages.at(-1)).toMatchObject({ role: "user", content: "please", run_id: refused.run_id })
    }))

  it.effect("owner only: another user's thread is not found, over WebSocket and HTTP; a start on it is refused", () =>
    Effect.gen(function*() {
      const alice = yield* connectAs("alice-2")
      yield* echoOn(alice, "t-private", "secret plans")
      const bob = yield* connectAs("bob-2")
      bob.send({ type: "get_thread", thread_id: "t-private", request_id: "g" })
      expect(yield* bob.next("error", (m) => m.request_id === "g")).toMatchObject({ code: "THREAD_NOT_FOUND" })
      bob.send({ type: "get_thread", thread_id: "t-never-was", request_id: "g0" })
      const unknown = yield* bob.next("error", (m) => m.request_id === "g0")
      expect(unknown.code).toBe("THREAD_NOT_FOUND")
      bob.send({ type: "delete_thread", thread_id: "t-private", request_id: "d" })
      expect(yield* bob.next("error", (m) => m.request_id === "d")).toMatchObject({ code: "THREAD_NOT_FOUND" })
      bob.send({ type: "start_agent", agent: "echo", user_request: "let me in", thread_id: "t-private", request_id: "s" })
      expect(yield* bob.next("error", (m) => m.request_id === "s")).toMatchObject({ code: "THREAD_NOT_FOUND" })
      expect(bob.received.some((m) => m.type === "run_accepted")).toBe(false)
      expect((yield* http("GET", "/api/threads/t-private", "bob-2"))).toMatchObject({ status: 404, body: { error: { code: "THREAD_NOT_FOUND" } } })
      expect((yield* http("DELETE", "/api/threads/t-private", "bob-2")).status).toBe(404)
      expect((yield* http("GET", "/api/threads", undefined)).status).toBe(401)
      // over HTTP too, a start on the thread is refused
      const url = yield* AgentwireServer.useSync((s) => `${s.url}/api/runs`)
      const token = yield* tokenFor("bob-2")
      const start = yield* Effect.promise(async () => {
        const res = await fetch(url, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ agent: "echo", user_request: "x", thread_id: "t-private" })
        })
        return { status: res.status, body: await res.json() as Record<string, any> }
      })
      expect(start).toMatchObject({ status: 404, body: { error: { code: "THREAD_NOT_FOUND" } } })
      // alice's thread is intact and hers
      alice.send({ type: "get_thread", thread_id: "t-private", request_id: "mine" })
      expect((yield* alice.next("thread", (m) => m.request_id === "mine")).messages).toHaveLength(2)
    }))

  it.effect("paging: newest first, limit per page, next_before until the last page; a bad cursor is INVALID_MESSAGE", () =>
    Effect.gen(function*() {
      const carol = yield* connectAs("carol-3")
      for (const n of [1, 2, 3, 4, 5]) yield* echoOn(carol, `t-page-${n}`, `question ${n}`)
      const seen: Array<string> = []
      let before: string | undefined
      for (let page = 0; page < 5; page++) {
        const request_id = `p${page}`
        carol.send({ type: "list_threads", limit: 2, request_id, ...(before === undefined ? {} : { before }) })
        const answer = yield* carol.next("threads", (m) => m.request_id === request_id)
        seen.push(...answer.threads.map((t) => t.thread_id))
        before = answer.next_before
        if (before === undefined) break
      }
      expect(seen).toEqual(["t-page-5", "t-page-4", "t-page-3", "t-page-2", "t-page-1"])
      const http1 = yield* http("GET", "/api/threads?limit=3", "carol-3")
      expect(http1.body.threads).toHaveLength(3)
      const http2 = yield* http("GET", `/api/threads?limit=3&before=${encodeURIComponent(http1.body.next_before)}`, "carol-3")
      expect(http2.body.threads.map((t: { thread_id: string }) => t.thread_id)).toEqual(["t-page-2", "t-page-1"])
      expect(http2.body.next_before).toBeUndefined()
      carol.send({ type: "list_threads", before: "not-a-cursor", request_id: "bad" })
      expect(yield* carol.next("error", (m) => m.request_id === "bad")).toMatchObject({ code: "INVALID_MESSAGE" })
      expect((yield* http("GET", "/api/threads?limit=0", "carol-3")).status).toBe(400)
      carol.send({ type: "list_threads", limit: 101, request_id: "big" })
      expect(yield* carol.next("error", (m) => m.request_id === "big")).toMatchObject({ code: "INVALID_MESSAGE" })
    }))

  it.effect("delete_thread and DELETE /api/threads/{id} remove the thread; then it is not found", () =>
    Effect.gen(function*() {
      const dave = yield* connectAs("dave-4")
      const deletedRun = yield* echoOn(dave, "t-del-1", "one")
      const keptRun = yield* echoOn(dave, "t-del-2", "two")
      dave.send({ type: "delete_thread", thread_id: "t-del-1", request_id: "d1" })
      expect(yield* dave.next("thread_deleted", (m) => m.request_id === "d1")).toMatchObject({ thread_id: "t-del-1" })
      // the deleted thread's retained run events are gone too; the other thread's stay
      dave.send({ type: "resume_run", run_id: deletedRun, after_seq: 0, request_id: "r1" })
      expect(yield* dave.next("error", (m) => m.request_id === "r1")).toMatchObject({ code: "RUN_NOT_FOUND" })
      dave.send({ type: "list_runs", request_id: "lr1" })
      expect((yield* dave.next("runs", (m) => m.request_id === "lr1")).runs.map((r) => r.run_id)).toEqual([keptRun])
      dave.send({ type: "get_thread", thread_id: "t-del-1", request_id: "g1" })
      expect(yield* dave.next("error", (m) => m.request_id === "g1")).toMatchObject({ code: "THREAD_NOT_FOUND" })
      expect(yield* http("DELETE", "/api/threads/t-del-2", "dave-4")).toMatchObject({ status: 200, body: { thread_id: "t-del-2", deleted: true } })
      expect((yield* http("DELETE", "/api/threads/t-del-2", "dave-4")).status).toBe(404)
      // a thread id that is not an id is refused as on the WebSocket
      for (const bad of ["none", "bad!id", "bad%20id"]) {
        expect(yield* http("GET", `/api/threads/${bad}`, "dave-4")).toMatchObject({ status: 400, body: { error: { code: "INVALID_MESSAGE" } } })
        expect(yield* http("DELETE", `/api/threads/${bad}`, "dave-4")).toMatchObject({ status: 400, body: { error: { code: "INVALID_MESSAGE" } } })
      }
      expect((yield* http("GET", "/api/threads", "dave-4")).body.threads).toEqual([])
      expect(rowsOf("dave-4")).toEqual([0, 0, 0])
    }))

  it.effect("DELETE /api/users/me/data erases every row and retained event of the caller, and nothing of anyone else", () =>
    Effect.gen(function*() {
      const erin = yield* connectAs("erin-5")
      const run_id = yield* echoOn(erin, "t-erin-1", "remember me")
      yield* echoOn(erin, "t-erin-2", "and this")
      // a start with a client request_id, which admission remembers for its idempotency window
      erin.send({ type: "start_agent", agent: "echo", user_request: "again", thread_id: "t-erin-3", request_id: "erin-req" })
      const remembered = yield* erin.next("run_accepted", (m) => m.request_id === "erin-req")
      yield* erin.next("agent_completed", (m) => m.run_id === remembered.run_id && m.depth === 0)
      const frank = yield* connectAs("frank-5")
      const franks = yield* echoOn(frank, "t-frank", "keep mine")
      expect(rowsOf("erin-5")).toEqual([3, 6, 3])
      const erased = yield* http("DELETE", "/api/users/me/data", "erin-5")
      expect(erased).toMatchObject({ status: 200, body: { erased: { threads: 3, messages: 6, runs: 3, events: 3 } } })
      expect(rowsOf("erin-5")).toEqual([0, 0, 0])
      // the run log forgot erin's runs too: not even a tombstone (RUN_NOT_FOUND, not RUN_EXPIRED)
      erin.send({ type: "resume_run", run_id, after_seq: 0, request_id: "r" })
      expect(yield* erin.next("error", (m) => m.request_id === "r")).toMatchObject({ code: "RUN_NOT_FOUND" })
      erin.send({ type: "list_runs", request_id: "lr" })
      expect((yield* erin.next("runs", (m) => m.request_id === "lr")).runs).toEqual([])
      // nor does the engine or admission remember erin's runs: her old run is unknown to a stop, and a start
      // repeating a request_id she used is a new run, not a duplicate pointing at the erased one
      expect((yield* http("POST", `/api/runs/${run_id}/stop`, "erin-5")).status).toBe(404)
      erin.send({ type: "start_agent", agent: "echo", user_request: "again", thread_id: "t-erin-3", request_id: "erin-req" })
      const again = yield* erin.next("run_accepted", (m) => m.request_id === "erin-req")
      expect(again.duplicate).toBeUndefined()
      expect(again.run_id).not.toBe(remembered.run_id)
      yield* erin.next("agent_completed", (m) => m.run_id === again.run_id && m.depth === 0)
      // frank is untouched
      expect(rowsOf("frank-5")).toEqual([1, 2, 1])
      frank.send({ type: "resume_run", run_id: franks, after_seq: 0, request_id: "fr" })
      yield* frank.next("run_resumed", (m) => m.request_id === "fr")
    }))

  it.effect("get_thread of a huge thread answers its newest part, about 1 MiB, marked truncated, over WebSocket and HTTP", () =>
    Effect.gen(function*() {
      const store = yield* ConversationStore
      const key = { user_id: "gina-7", thread_id: "t-huge" }
      // 30 requests of 200 000 characters: 6 MB stored
      for (let n = 0; n < 30; n++) yield* store.append(key, [{ role: "user", content: `${n}:` + "x".repeat(200_000) }])
      const gina = yield* connectAs("gina-7")
      gina.send({ type: "get_thread", thread_id: "t-huge", request_id: "g" })
      const thread = yield* gina.next("thread", (m) => m.request_id === "g")
      expect(thread.truncated).toBe(true)
      expect(thread.messages.length).toBeGreaterThan(1)
      expect(thread.messages.length).toBeLessThan(30)
      expect(thread.messages.at(-1)!.content.startsWith("29:")).toBe(true)
      expect(thread.messages.every((m) => m.truncated === true && m.content.length === 65_536)).toBe(true)
      expect(JSON.stringify(thread).length).toBeLessThan(1.2 * 1024 * 1024)
      const got = yield* http("GET", "/api/threads/t-huge", "gina-7")
      expect(got.status).toBe(200)
      expect(got.body.truncated).toBe(true)
      expect(JSON.stringify(got.body).length).toBeLessThan(1.2 * 1024 * 1024)
    }))

  it.effect("/ready reports history (up, sqlite, no pending writes)", () =>
    Effect.gen(function*() {
      const ready = yield* http("GET", "/ready", undefined)
      expect(ready.status).toBe(200)
      expect(ready.body.components.history).toMatchObject({ status: "up", required: false, backend: "sqlite", dropped_writes: 0 })
    }))
})
