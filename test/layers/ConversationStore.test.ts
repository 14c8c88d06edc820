/**
 * The shared store suite against the in-memory layer and SQLite (a temp file).
 * PostgreSQL: `ConversationStorePg.test.ts`.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option } from "effect"
import { DatabaseSync } from "node:sqlite"
import { monitorEventLoopDelay } from "node:perf_hooks"
import * as History from "../../src/layers/History.ts"
import { ConversationStore } from "../../src/services/ConversationStore.ts"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as ConversationStoreBuffered from "../../src/layers/ConversationStoreBuffered.ts"
import * as ConversationStoreMemory from "../../src/layers/ConversationStoreMemory.ts"
import * as ConversationStoreSql from "../../src/layers/ConversationStoreSql.ts"
import * as SqliteClient from "../../src/layers/SqliteClient.ts"
import { SqlClient } from "effect/sql"
import { storeSuite } from "../fixtures/store-suite.ts"

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "agentwire-store-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

describe("ConversationStore", () => {
  storeSuite("memory", (clock) => ConversationStoreMemory.make({ now: clock.now }))

  storeSuite("sqlite", (clock) =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const sql = yield* SqliteClient.make(join(dir, "history.db"))
      return yield* Effect.andThen(ConversationStoreSql.migrate(), ConversationStoreSql.make({ now: clock.now, backend: "sqlite" })).pipe(
        Effect.provideService(SqlClient.SqlClient, sql)
      )
    }))
})

describe("ConversationStoreSql on SQLite: migrations", () => {
  it.effect("an empty database gets every migration; one at the previous version gets the rest and keeps its data", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const empty = yield* SqliteClient.make(join(dir, "empty.db"))
      expect(yield* ConversationStoreSql.migrate().pipe(Effect.provideService(SqlClient.SqlClient, empty))).toEqual([1, 2])
      expect(yield* ConversationStoreSql.migrate().pipe(Effect.provideService(SqlClient.SqlClient, empty))).toEqual([])

      const sql = yield* SqliteClient.make(join(dir, "old.db"))
      yield* Effect.gen(function*() {
        expect(yield* ConversationStoreSql.migrate(1)).toEqual([1])
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
})

describe("ConversationStoreBuffered on SQLite: refused writes", () => {
  it.live("a write the database refuses for good is set aside, counted; the writes behind it go on", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const sql = yield* SqliteClient.make(join(dir, "history.db"))
      const inner = yield* Effect.andThen(ConversationStoreSql.migrate(), ConversationStoreSql.make({ backend: "sqlite" })).pipe(
        Effect.provideService(SqlClient.SqlClient, sql)
      )
      const store = yield* ConversationStoreBuffered.make(inner, { retryBaseMs: 1, retryMaxMs: 5, readBarrierMs: 10_000 })
      const key = { user_id: "alice", thread_id: "t" }
      // refused by the CHECK on role (SQLITE_CONSTRAINT_CHECK)
      yield* store.append(key, [{ role: "system" as "user", content: "refused" }])
      yield* store.append(key, [{ role: "user", content: "next" }])
      expect(yield* store.load(key)).toEqual([{ role: "user", content: "next" }])
      expect(yield* store.health).toMatchObject({ status: "up", pending_writes: 0, dropped_writes: 0, failed_writes: 1 })
    })), 30_000)

  it.live("batched in one transaction as the server does: a refused write rolls its batch back, then only it is set aside", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const sql = yield* SqliteClient.make(join(dir, "history.db"))
      const inner = yield* Effect.andThen(ConversationStoreSql.migrate(), ConversationStoreSql.make({ backend: "sqlite" })).pipe(
        Effect.provideService(SqlClient.SqlClient, sql)
      )
      const store = yield* ConversationStoreBuffered.make(inner, {
        retryBaseMs: 1,
        retryMaxMs: 5,
        readBarrierMs: 10_000,
        transaction: (batch) => sql.withTransaction(batch)
      })
      const key = { user_id: "alice", thread_id: "t" }
      const other = { user_id: "alice", thread_id: "refused-thread" }
      yield* store.append(key, [{ role: "user", content: "first" }])
      // the thread row is written before the refused message: the rollback must take it back
      yield* store.append(other, [{ role: "system" as "user", content: "refused" }])
      yield* store.append(key, [{ role: "user", content: "next" }])
      expect(yield* store.load(key)).toEqual([{ role: "user", content: "first" }, { role: "user", content: "next" }])
      expect(Option.isNone(yield* store.getThread(other))).toBe(true)
      expect(yield* store.health).toMatchObject({ status: "up", pending_writes: 0, failed_writes: 1 })
    })), 30_000)
})

describe("ConversationStoreSql on SQLite: direct writes", () => {
  it.effect("a write inside an effect/sql transaction is part of it: rolled back with it", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const sql = yield* SqliteClient.make(join(dir, "history.db"))
      const store = yield* Effect.andThen(ConversationStoreSql.migrate(), ConversationStoreSql.make({ backend: "sqlite" })).pipe(
        Effect.provideService(SqlClient.SqlClient, sql)
      )
      const key = { user_id: "alice", thread_id: "t" }
      const run = { run_id: "run_1", user_id: "alice", thread_id: "t", agent_name: "echo", status: "running" as const, started_at: 1000 }
      const failed = yield* Effect.flip(sql.withTransaction(Effect.andThen(store.recordRun(run, { title: "hi", messages: [{ role: "user", content: "hi" }] }), Effect.fail("abort"))))
      expect(failed).toBe("abort")
      expect(Option.isNone(yield* store.getThread(key))).toBe(true)
      yield* sql.withTransaction(store.recordRun(run, { title: "hi", messages: [{ role: "user", content: "hi" }] }))
      expect(yield* store.load(key)).toEqual([{ role: "user", content: "hi" }])
    })))

  it.effect("a write of its own that fails part-way leaves nothing behind", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const sql = yield* SqliteClient.make(join(dir, "history.db"))
      const store = yield* Effect.andThen(ConversationStoreSql.migrate(), ConversationStoreSql.make({ backend: "sqlite" })).pipe(
        Effect.provideService(SqlClient.SqlClient, sql)
      )
      const key = { user_id: "alice", thread_id: "t" }
      const error = yield* Effect.flip(store.append(key, [{ role: "user", content: "kept?" }, { role: "system" as "user", content: "refused" }]))
      expect(error).toMatchObject({ _tag: "ConversationStoreError", operation: "append", permanent: true })
      expect(Option.isNone(yield* store.getThread(key))).toBe(true)
      expect(yield* store.load(key)).toEqual([])
    })))
})

describe("History on SQLite: a database locked by another connection", () => {
  it.live("writes fail fast and are retried until the lock goes; the event loop never waits for the lock", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const context = yield* Layer.build(History.layerSqlite(dir, { retryBaseMs: 5, retryMaxMs: 50, readBarrierMs: 10_000 }))
      const store = Context.get(context, ConversationStore)
      const key = { user_id: "alice", thread_id: "t" }
      yield* store.append(key, [{ role: "user", content: "before" }])
      expect(yield* store.load(key)).toEqual([{ role: "user", content: "before" }])

      // another connection (as another process would) takes the write lock and keeps it
      const other = new DatabaseSync(join(dir, History.SQLITE_FILE))
      yield* Effect.addFinalizer(() => Effect.sync(() => other.isOpen && other.close()))
      other.exec("BEGIN EXCLUSIVE")
      other.exec("INSERT INTO agentwire_migrations SELECT * FROM agentwire_migrations WHERE 0")
      const delay = monitorEventLoopDelay({ resolution: 10 })
      delay.enable()
      yield* store.append(key, [{ role: "user", content: "during" }])
      // the writer meets the lock (and keeps retrying); the loop keeps turning meanwhile
      let ticks = 0
      while ((yield* store.health).last_error === undefined || ticks < 20) {
        ticks++
        yield* Effect.sleep(5)
      }
      delay.disable()
      const health = yield* store.health
      expect(health).toMatchObject({ status: "degraded", pending_writes: 1 })
      expect(health.last_error).toMatch(/LockTimeoutError|locked|busy/i)
      // a 5 s busy timeout blocked the whole process for 5 s per attempt; now a few ms at most
      expect(delay.max / 1e6).toBeLessThan(1000)

      other.exec("COMMIT")
      other.close()
      expect(yield* store.load(key)).toEqual([{ role: "user", content: "before" }, { role: "user", content: "during" }])
      expect(yield* store.health).toMatchObject({ status: "up", pending_writes: 0, failed_writes: 0 })
    })), 60_000)
})

describe("History on SQLite: a restart after a crash", () => {
  it.effect("runs the previous process left running are marked failed with INSTANCE_LOST; their requests are kept; ended runs are untouched", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const key = { user_id: "alice", thread_id: "t" }
      const run = { run_id: "run_lost", user_id: "alice", thread_id: "t", agent_name: "echo", status: "running" as const, started_at: 1000 }
      // the first process records two run starts and ends one, then dies (its layer closes without ending the other)
      yield* Effect.scoped(Effect.gen(function*() {
        const store = Context.get(yield* Layer.build(History.layerSqlite(dir)), ConversationStore)
        yield* store.recordRun(run, { title: "q", messages: [{ role: "user", content: "q" }] })
        yield* store.recordRun({ ...run, run_id: "run_done", started_at: 2000 }, { title: "q2", messages: [{ role: "user", content: "q2" }] })
        yield* store.recordRun({ ...run, run_id: "run_done", started_at: 2000, status: "completed", ended_at: 2001, final_response: "a2" }, { messages: [{ role: "assistant", content: "a2" }] })
      }))
      const store = Context.get(yield* Layer.build(History.layerSqlite(dir)), ConversationStore)
      const thread = Option.getOrThrow(yield* store.getThread(key))
      expect(thread.runs.find((r) => r.run_id === "run_lost")).toMatchObject({ status: "failed", error_code: "INSTANCE_LOST" })
      expect(thread.runs.find((r) => r.run_id === "run_lost")?.ended_at).toBeTypeOf("number")
      expect(thread.runs.find((r) => r.run_id === "run_done")).toMatchObject({ status: "completed", final_response: "a2" })
      expect(thread.messages.map((m) => m.content)).toEqual(["q", "q2", "a2"])
      expect(thread.last_status).toBe("completed")
    })))
})

describe("History on SQLite: a file that is not a database", () => {
  it.effect("is a typed start failure that says so and what to do", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      writeFileSync(join(dir, History.SQLITE_FILE), "not a database, just text. ".repeat(200))
      const error = yield* Effect.flip(Layer.build(History.layerSqlite(dir)))
      expect(error._tag).toBe("HistoryStartError")
      expect(error.message).toContain("not an SQLite database or is corrupt")
      expect(error.message).toContain("file is not a database")
    })))

  it.effect("a database file deleted while the server runs makes health say so (degraded, naming the file), instead of losing writes silently", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const store = Context.get(yield* Layer.build(History.layerSqlite(dir)), ConversationStore)
      expect((yield* store.health).status).toBe("up")
      for (const suffix of ["", "-wal", "-shm"]) rmSync(join(dir, `${History.SQLITE_FILE}${suffix}`), { force: true })
      const health = yield* store.health
      expect(health.status).toBe("degraded")
      expect(health.last_error).toContain("deleted or replaced")
    })))
})
