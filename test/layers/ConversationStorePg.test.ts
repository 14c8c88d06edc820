/**
 * PostgreSQL (a real cluster started by the test, `fixtures/postgres.ts`): the
 * shared store suite, migrations from an empty database and from the previous
 * schema version, a typed start failure that never shows the password, and a
 * database that goes away mid-run under a real server (streaming goes on;
 * history waits and catches up). Without PostgreSQL installed these tests are
 * skipped, and their name says how to install it.
 */
import { PgClient } from "@effect/sql-pg"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, Redacted } from "effect"
import { Reactivity } from "effect/reactivity"
import { SqlClient } from "effect/sql"
import * as Agentwire from "../../src/Agentwire.ts"
import * as AgentwireConfig from "../../src/layers/AgentwireConfig.ts"
import * as ConversationStoreBuffered from "../../src/layers/ConversationStoreBuffered.ts"
import * as ConversationStoreSql from "../../src/layers/ConversationStoreSql.ts"
import * as History from "../../src/layers/History.ts"
import { AgentwireServer } from "../../src/services/AgentwireServer.ts"
import { Auth } from "../../src/services/Auth.ts"
import { ConversationStore } from "../../src/services/ConversationStore.ts"
import { connect } from "../fixtures/client.ts"
import { type Cluster, findPostgres, freePort, INSTALL_HINT, startCluster } from "../fixtures/postgres.ts"
import { QuietLogs, registry } from "../fixtures/runtime.ts"
import { storeSuite } from "../fixtures/store-suite.ts"

const bin = findPostgres()
let cluster: Cluster | undefined
let databases = 0

/** A fresh database on the cluster, and a client on it (closed with the scope). */
const freshDatabase = Effect.gen(function*() {
  const name = `agentwire_t${++databases}`
  yield* Effect.gen(function*() {
    const admin = yield* SqlClient.SqlClient
    yield* admin`CREATE DATABASE ${admin(name)}`
  }).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(cluster!.url()), maxConnections: 1 })))
  const url = cluster!.url(name)
  const sql = yield* PgClient.make({ url: Redacted.make(url), maxConnections: 2 }).pipe(Effect.provide(Reactivity.layer))
  return { sql: sql as SqlClient.SqlClient, url }
})

describe.skipIf(bin === undefined)(bin === undefined ? `PostgreSQL (skipped: ${INSTALL_HINT})` : "PostgreSQL", () => {
  beforeAll(async () => {
    cluster = await startCluster(bin!)
  }, 60_000)
  afterAll(async () => {
    await cluster?.destroy()
  }, 60_000)

  storeSuite("postgres", (clock) =>
    Effect.gen(function*() {
      const { sql } = yield* freshDatabase
      return yield* Effect.andThen(ConversationStoreSql.migrate(), ConversationStoreSql.make({ now: clock.now, backend: "postgres" })).pipe(
        Effect.provideService(SqlClient.SqlClient, sql)
      )
    }).pipe(Effect.orDie))

  it.effect("migrations: an empty database gets every migration; one at the previous version gets the rest and keeps its data", () =>
    Effect.scoped(Effect.gen(function*() {
      const empty = yield* freshDatabase
      expect(yield* ConversationStoreSql.migrate().pipe(Effect.provideService(SqlClient.SqlClient, empty.sql))).toEqual([1, 2])
      expect(yield* ConversationStoreSql.migrate().pipe(Effect.provideService(SqlClient.SqlClient, empty.sql))).toEqual([])

      const old = yield* freshDatabase
      const sql = old.sql
      yield* Effect.gen(function*() {
        expect(yield* ConversationStoreSql.migrate(1)).toEqual([1])
        // data written by a server at schema version 1
        yield* sql`INSERT INTO agentwire_threads (user_id, thread_id, title, created_at, updated_at) VALUES ('alice', 't', 'old thread', 1000, 1000)`
        yield* sql`INSERT INTO agentwire_messages (user_id, thread_id, role, content, run_id, created_at) VALUES ('alice', 't', 'user', 'hi', NULL, 1000)`
        expect(yield* ConversationStoreSql.migrate()).toEqual([2])
        const store = yield* ConversationStoreSql.make()
        expect(yield* store.load({ user_id: "alice", thread_id: "t" })).toEqual([{ role: "user", content: "hi" }])
        yield* store.recordRun({ run_id: "run_1", user_id: "alice", thread_id: "t", agent_name: "echo", status: "completed", started_at: 2000, ended_at: 2001 })
        const thread = Option.getOrThrow(yield* store.getThread({ user_id: "alice", thread_id: "t" }))
        expect(thread.title).toBe("old thread")
        expect(thread.runs.map((r) => r.run_id)).toEqual(["run_1"])
      }).pipe(Effect.provideService(SqlClient.SqlClient, sql))
    })))

  it.effect("an unreachable database is a typed start failure naming it, without its password", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(freePort)
      const url = `postgres://agent:${cluster!.password}@127.0.0.1:${port}/history`
      const error = yield* Effect.flip(Layer.build(History.layerPostgres(Redacted.make(url), { connectTimeoutMs: 2000 })).pipe(Effect.scoped))
      expect(error._tag).toBe("HistoryStartError")
      expect(error.message).toContain(`postgres://agent@127.0.0.1:${port}/history`)
      expect(error.message).not.toContain(cluster!.password)
      expect(error.message).toContain("connection refused")
      // a wrong password too: the server answers, authentication fails
      const wrong = `postgres://postgres:not-the-${cluster!.password}@127.0.0.1:${cluster!.port}/postgres`
      const refused = yield* Effect.flip(Layer.build(History.layerPostgres(Redacted.make(wrong))).pipe(Effect.scoped))
      expect(refused.message).toContain(`127.0.0.1:${cluster!.port}/postgres`)
      expect(refused.message).not.toContain(cluster!.password)
      expect(refused.message).toContain("authentication failed: check the user and password")
      // a database that does not exist
      const missing = yield* Effect.flip(Layer.build(History.layerPostgres(Redacted.make(cluster!.url("no_such_database")))).pipe(Effect.scoped))
      expect(missing.message).toContain("the database does not exist")
      expect(missing.message).toContain("no_such_database")
      expect(missing.message).not.toContain(cluster!.password)
    }), 30_000)

  it.live("the database goes away mid-run: events keep streaming, history is degraded, then catches up with nothing lost", () =>
    Effect.scoped(Effect.gen(function*() {
      const { url } = yield* freshDatabase
      const secret = "outage-suite-secret-0123456789-abcdef"
      const context = yield* Layer.build(Agentwire.layerServer(registry).pipe(
        Layer.provide(QuietLogs),
        Layer.provideMerge(History.layerPostgres(Redacted.make(url), { retryBaseMs: 20, retryMaxMs: 200, readBarrierMs: 3000, connectTimeoutMs: 1000 })),
        Layer.provideMerge(AgentwireConfig.layer({ port: 0, jwtSecret: Option.some(Redacted.make(secret)) }))
      ))
      const server = context.mapUnsafe.get(AgentwireServer.key) as AgentwireServer["Service"]
      const auth = context.mapUnsafe.get(Auth.key) as Auth["Service"]
      const store = context.mapUnsafe.get(ConversationStore.key) as ConversationStore["Service"]
      const token = yield* auth.issue("alice", 300)
      const client = yield* connect(`${server.url.replace(/^http/, "ws")}/ws`, { headers: { authorization: `Bearer ${token}` } })
      yield* client.next("connection_established")

      client.send({ type: "start_agent", agent: "ticker", user_request: "steps=20 interval_ms=30", thread_id: "t-outage", request_id: "r1" })
      const accepted = yield* client.next("run_accepted")
      yield* client.next("agent_thinking", (m) => m.run_id === accepted.run_id)
      yield* Effect.promise(() => cluster!.stop())
      // streaming is not affected: every step and the end arrive
      const events = yield* client.runEvents(accepted.run_id)
      expect(events.filter((e) => e.type === "agent_thinking")).toHaveLength(20)
      expect(events.at(-1)).toMatchObject({ type: "agent_completed", status: "completed" })
      // history cannot be read now
      client.send({ type: "get_thread", thread_id: "t-outage", request_id: "g1" })
      expect(yield* client.next("error", (m) => m.request_id === "g1")).toMatchObject({ code: "HISTORY_UNAVAILABLE" })
      // and /ready says so, while staying ready (history is not required)
      const ready = yield* Effect.promise(() => fetch(`${server.url}/ready`).then(async (r) => ({ status: r.status, body: await r.json() as any })))
      expect(ready.status).toBe(200)
      expect(ready.body.components.history).toMatchObject({ status: "down", state: "degraded", required: false, backend: "postgres" })
      expect(ready.body.components.history.pending_writes).toBeGreaterThanOrEqual(1)
      expect((yield* store.health).status).toBe("degraded")
      // the database comes back: the queued writes land, in order, and nothing is lost
      yield* Effect.promise(() => cluster!.start())
      client.send({ type: "get_thread", thread_id: "t-outage", request_id: "g2" })
      const thread = yield* client.next("thread", (m) => m.request_id === "g2")
      expect(thread.runs).toMatchObject([{ run_id: accepted.run_id, status: "completed", agent_name: "ticker" }])
      expect(thread.messages.map((m) => m.role)).toEqual(["user", "assistant"])
      expect(yield* store.health).toMatchObject({ status: "up", pending_writes: 0, dropped_writes: 0 })
    })), 60_000)

  it.live("a request with NUL is stored (as U+FFFD); a write the database refuses for good is set aside, counted; the writes behind it go on", () =>
    Effect.scoped(Effect.gen(function*() {
      const { sql } = yield* freshDatabase
      // the kind of error the reviewer hit: PostgreSQL refuses NUL in text (SQLSTATE 22021), for good
      const nul = yield* Effect.flip(sql`SELECT ${"a\u0000b"}::text AS t`)
      expect(ConversationStoreSql.isPermanent(nul)).toBe(true)
      const inner = yield* Effect.andThen(ConversationStoreSql.migrate(), ConversationStoreSql.make({ backend: "postgres" })).pipe(
        Effect.provideService(SqlClient.SqlClient, sql)
      )
      const store = yield* ConversationStoreBuffered.make(inner, { retryBaseMs: 1, retryMaxMs: 5, readBarrierMs: 10_000 })
      const key = { user_id: "alice", thread_id: "t" }
      yield* store.append(key, [{ role: "user", content: "before\u0000after" }])
      // refused by the CHECK on role (SQLSTATE 23514)
      yield* store.append(key, [{ role: "system" as "user", content: "refused" }])
      yield* store.append(key, [{ role: "user", content: "next" }])
      expect(yield* store.load(key)).toEqual([{ role: "user", content: "before\uFFFDafter" }, { role: "user", content: "next" }])
      expect(yield* store.health).toMatchObject({ status: "up", pending_writes: 0, dropped_writes: 0, failed_writes: 1 })
    })), 30_000)
})
