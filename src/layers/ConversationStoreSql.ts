/**
 * `ConversationStore` over an `effect/sql` `SqlClient`: SQLite (`SqliteClient.ts`)
 * or PostgreSQL (`@effect/sql-pg`). Writes go straight to the database: wrap it
 * in `ConversationStoreBuffered` to keep them off the hot path (the server does).
 *
 * Tables (created by `migrations`, run with `effect/sql`'s `Migrator`; the
 * applied ids are kept in `agentwire_migrations`):
 * - `agentwire_threads (user_id, thread_id, title, created_at, updated_at)`, key `(user_id, thread_id)`;
 * - `agentwire_messages (id, user_id, thread_id, role, content, run_id, created_at)`, `id` ascending = order;
 * - `agentwire_runs (run_id, user_id, thread_id, agent_name, status, started_at, ended_at, final_response, error_code)`.
 * Times are milliseconds since the epoch (`INTEGER` / `BIGINT`).
 *
 * `load` gives a model the newest `maxMessagesForModel` messages, at most
 * `maxCharsForModel` characters (oldest dropped first); `getThread` returns at
 * most the newest `MAX_THREAD_MESSAGES` messages and runs, bounded by
 * `boundThread` (about 1 MiB; texts cut in the database, so a huge thread is
 * never read whole).
 *
 * @module
 */
import { Array as Arr, Effect, Layer, Option } from "effect"
import { Migrator, SqlClient, type SqlError } from "effect/sql"
import * as SqliteClient from "./SqliteClient.ts"
import {
  ConversationStore,
  ConversationStoreError,
  type ConversationKey,
  type ConversationMessage,
  MAX_THREAD_PAGE,
  type RunRecord,
  type RunRecordStatus,
  boundThread,
  storableText,
  type StoredMessage,
  THREAD_MAX_BYTES,
  THREAD_MESSAGE_MAX_CHARS,
  THREAD_RESPONSE_MAX_CHARS,
  type ThreadSummary,
  titleOf
} from "../services/ConversationStore.ts"

/** The table of applied migration ids. */
export const MIGRATIONS_TABLE = "agentwire_migrations"

/** Messages (and runs) `getThread` returns at most: the newest ones. */
export const MAX_THREAD_MESSAGES = 1000

export interface ConversationStoreSqlOptions {
  /** Messages `load` gives a model (default 100, the newest). */
  readonly maxMessagesForModel?: number | undefined
  /** Characters `load` gives a model (default 64 000; oldest messages dropped first). */
  readonly maxCharsForModel?: number | undefined
  /** Reported by `health` (`sqlite`, `postgres`). */
  readonly backend?: string | undefined
  /** The clock, ms since the epoch (default `Date.now`). */
  readonly now?: (() => number) | undefined
}

const migration1 = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const pg = sql.onDialectOrElse({ pg: () => true, orElse: () => false })
  const time = pg ? "BIGINT" : "INTEGER"
  yield* sql.unsafe(`CREATE TABLE agentwire_threads (
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    title TEXT NOT NULL,
    created_at ${time} NOT NULL,
    updated_at ${time} NOT NULL,
    PRIMARY KEY (user_id, thread_id)
  )`)
  yield* sql.unsafe(`CREATE INDEX agentwire_threads_recent ON agentwire_threads (user_id, updated_at DESC, thread_id DESC)`)
  yield* sql.unsafe(`CREATE INDEX agentwire_threads_id ON agentwire_threads (thread_id)`)
  yield* sql.unsafe(`CREATE TABLE agentwire_messages (
    id ${pg ? "BIGSERIAL PRIMARY KEY" : "INTEGER PRIMARY KEY AUTOINCREMENT"},
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    run_id TEXT,
    created_at ${time} NOT NULL
  )`)
  yield* sql.unsafe(`CREATE INDEX agentwire_messages_thread ON agentwire_messages (user_id, thread_id, id)`)
})

const migration2 = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const time = sql.onDialectOrElse({ pg: () => "BIGINT", orElse: () => "INTEGER" })
  yield* sql.unsafe(`CREATE TABLE agentwire_runs (
    run_id TEXT NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at ${time} NOT NULL,
    ended_at ${time},
    final_response TEXT,
    error_code TEXT
  )`)
  yield* sql.unsafe(`CREATE INDEX agentwire_runs_thread ON agentwire_runs (user_id, thread_id, started_at)`)
})

/** The schema's migrations, by id: 1 threads and messages, 2 run summaries. */
export const migrations: Record<string, Effect.Effect<void, unknown, SqlClient.SqlClient>> = {
  "1_threads_and_messages": migration1,
  "2_runs": migration2
}

/** Applies the migrations not yet applied (up to `upTo`, default all); returns the ids applied now. */
export const migrate = (upTo?: number) =>
  Migrator.make({})({
    loader: Effect.map(
      Migrator.fromRecord(migrations),
      (all) => upTo === undefined ? all : all.filter(([id]) => id <= upTo)
    ),
    table: MIGRATIONS_TABLE
  }).pipe(Effect.map((applied) => applied.map(([id]) => id)))

/**
 * Whether the database refused for good (retrying the same statement cannot
 * succeed): a constraint, syntax or data error. PostgreSQL SQLSTATE classes 22
 * (data exception, e.g. an invalid byte sequence) and 23 (integrity), 42
 * (syntax, undefined object) except 42501 (privilege); SQLite result codes
 * 18 TOOBIG, 19 CONSTRAINT, 20 MISMATCH, 25 RANGE. Everything else (connection
 * lost, busy/locked, timeouts, unknown) counts as transient.
 */
export const isPermanent = (error: SqlError.SqlError): boolean => {
  const reason = error.reason
  if (reason._tag === "ConstraintError" || reason._tag === "UniqueViolation" || reason._tag === "SqlSyntaxError") return true
  const cause = reason.cause as { readonly code?: unknown; readonly errcode?: unknown } | null | undefined
  if (typeof cause?.code === "string" && /^(22|23)[0-9A-Z]{3}$/.test(cause.code)) return true
  if (typeof cause?.errcode === "number") return [18, 19, 20, 25].includes(cause.errcode & 0xff)
  return false
}

/** The reason's tag with the driver's own words (e.g. `LockTimeoutError: database is locked`). */
const describeSqlError = (error: SqlError.SqlError): string => {
  const cause = error.reason.cause
  const detail = cause instanceof Error && cause.message.length > 0 ? cause.message : error.message
  return `${error.reason._tag}: ${detail}`.slice(0, 500)
}

const failWith = (operation: ConversationStoreError["operation"]) => (error: SqlError.SqlError) =>
  new ConversationStoreError({ operation, message: describeSqlError(error), permanent: isPermanent(error) })

// the writes of runs as SQLite statements (`direct`): the same as the effect/sql statements of `make`
const OPEN_THREAD_SQLITE = `INSERT INTO agentwire_threads (user_id, thread_id, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
  ON CONFLICT (user_id, thread_id) DO UPDATE SET updated_at =
    CASE WHEN excluded.updated_at > agentwire_threads.updated_at THEN excluded.updated_at ELSE agentwire_threads.updated_at END`
const RECORD_RUN_SQLITE = `INSERT INTO agentwire_runs
  (run_id, user_id, thread_id, agent_name, status, started_at, ended_at, final_response, error_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
  ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, ended_at = excluded.ended_at,
    final_response = excluded.final_response, error_code = excluded.error_code`
const INSERT_MESSAGE_SQLITE = `INSERT INTO agentwire_messages (user_id, thread_id, role, content, run_id, created_at) VALUES (?, ?, ?, ?, ?, ?)`

interface ThreadRow {
  readonly thread_id: string
  readonly title: string
  readonly created_at: number | string | bigint
  readonly updated_at: number | string | bigint
  readonly last_status: string | null
}

const num = (value: number | string | bigint | null): number => Number(value)

const summaryOf = (row: ThreadRow): ThreadSummary => ({
  thread_id: row.thread_id,
  title: row.title,
  created_at: num(row.created_at),
  updated_at: num(row.updated_at),
  ...(row.last_status === null ? {} : { last_status: row.last_status as RunRecordStatus })
})

/** Builds the store on the `SqlClient` in context; run `migrate` first. */
export const make = (options: ConversationStoreSqlOptions = {}) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const maxMessages = Math.max(1, options.maxMessagesForModel ?? 100)
    const maxChars = Math.max(1, options.maxCharsForModel ?? 64_000)
    const backend = options.backend ?? "sql"
    const now = options.now ?? Date.now

    // SQLite through SqliteClient: the writes of runs (two per run) take prepared statements directly,
    // the same SQL as below; effect/sql's statement machinery cost several times SQLite's own work
    const direct = SqliteClient.direct(sql)
    const directWrite = (
      user_id: string,
      thread_id: string,
      title: string,
      at: number,
      run: RunRecord | undefined,
      messages: ReadonlyArray<ConversationMessage> | undefined,
      run_id: string | undefined
    ) =>
      direct!.write((prepare) => {
        prepare(OPEN_THREAD_SQLITE).run(user_id, thread_id, storableText(title), at, at)
        if (run !== undefined) {
          prepare(RECORD_RUN_SQLITE).run(
            run.run_id,
            run.user_id,
            run.thread_id,
            storableText(run.agent_name),
            run.status,
            run.started_at,
            run.ended_at ?? null,
            run.final_response === undefined ? null : storableText(run.final_response),
            run.error_code === undefined ? null : storableText(run.error_code)
          )
        }
        if (messages !== undefined && messages.length > 0) {
          const insert = prepare(INSERT_MESSAGE_SQLITE)
          for (const m of messages) insert.run(user_id, thread_id, m.role, storableText(m.content), run_id ?? null, at)
        }
      })

    const openThread = (user_id: string, thread_id: string, title: string, at: number) =>
      sql`INSERT INTO agentwire_threads (user_id, thread_id, title, created_at, updated_at)
        VALUES (${user_id}, ${thread_id}, ${storableText(title)}, ${at}, ${at})
        ON CONFLICT (user_id, thread_id) DO UPDATE SET updated_at =
          CASE WHEN excluded.updated_at > agentwire_threads.updated_at THEN excluded.updated_at ELSE agentwire_threads.updated_at END`

    const insertMessages = (
      user_id: string,
      thread_id: string,
      messages: ReadonlyArray<ConversationMessage>,
      run_id: string | undefined,
      at: number
    ) => {
      const rows = messages.map((m) => ({ user_id, thread_id, role: m.role, content: storableText(m.content), run_id: run_id ?? null, created_at: at }))
      return Arr.isArrayNonEmpty(rows) ? sql`INSERT INTO agentwire_messages ${sql.insert(rows)}`.pipe(Effect.asVoid) : Effect.void
    }

    const threadsQuery = (user_id: string, limit: number, before: { readonly updated_at: number; readonly thread_id: string } | undefined) => {
      const after = before === undefined
        ? sql``
        : sql`AND (t.updated_at < ${before.updated_at} OR (t.updated_at = ${before.updated_at} AND t.thread_id < ${before.thread_id}))`
      return sql<ThreadRow>`SELECT t.thread_id, t.title, t.created_at, t.updated_at,
          (SELECT r.status FROM agentwire_runs r WHERE r.user_id = t.user_id AND r.thread_id = t.thread_id
            ORDER BY r.started_at DESC, r.run_id DESC LIMIT 1) AS last_status
        FROM agentwire_threads t
        WHERE t.user_id = ${user_id} ${after}
        ORDER BY t.updated_at DESC, t.thread_id DESC
        LIMIT ${limit}`
    }

    return ConversationStore.of({
      load: Effect.fn("ConversationStore.load")(function*(key, opts) {
        const except = opts?.exceptRun === undefined ? sql`` : sql`AND (run_id IS NULL OR run_id <> ${opts.exceptRun})`
        const rows = yield* sql<{ readonly role: "user" | "assistant"; readonly content: string }>`SELECT role, content FROM agentwire_messages
          WHERE user_id = ${key.user_id} AND thread_id = ${key.thread_id} ${except} ORDER BY id DESC LIMIT ${maxMessages}`.pipe(
          Effect.mapError(failWith("load"))
        )
        const out: Array<ConversationMessage> = []
        let chars = 0
        for (const row of rows) {
          const content = row.content.length > maxChars ? row.content.slice(-maxChars) : row.content
          if (out.length > 0 && chars + content.length > maxChars) break
          chars += content.length
          out.push({ role: row.role, content })
        }
        return out.reverse()
      }),
      append: Effect.fn("ConversationStore.append")(function*(key, messages, opts) {
        if (messages.length === 0) return
        const at = opts?.at ?? now()
        if (direct !== undefined) {
          return yield* directWrite(key.user_id, key.thread_id, titleOf(messages[0]!.content), at, undefined, messages, opts?.run_id).pipe(
            Effect.mapError(failWith("append"))
          )
        }
        yield* sql.withTransaction(Effect.andThen(
          openThread(key.user_id, key.thread_id, titleOf(messages[0]!.content), at),
          insertMessages(key.user_id, key.thread_id, messages, opts?.run_id, at)
        )).pipe(Effect.mapError(failWith("append")))
      }),
      markRunLost: Effect.fn("ConversationStore.markRunLost")(function*(key: ConversationKey & { readonly run_id: string }, at: number) {
        yield* sql`UPDATE agentwire_runs SET status = 'failed', ended_at = ${at}, error_code = ${INSTANCE_LOST},
          final_response = ${LOST_RESPONSE} WHERE run_id = ${key.run_id} AND user_id = ${key.user_id} AND status = 'running'`.pipe(
          Effect.mapError(failWith("markRunLost"))
        )
      }),
      // untraced: called twice per run on every run's path, and a span per call (Effect.fn) cost about
      // 5 µs of CPU each (scratch measure, issue 9); the writes are applied by the buffered store's writer anyway
      recordRun: Effect.fnUntraced(function*(run: RunRecord, opts) {
        const at = opts?.at ?? now()
        if (direct !== undefined) {
          return yield* directWrite(run.user_id, run.thread_id, opts?.title ?? "", at, run, opts?.messages, run.run_id).pipe(
            Effect.mapError(failWith("record"))
          )
        }
        yield* sql.withTransaction(Effect.gen(function*() {
          yield* openThread(run.user_id, run.thread_id, opts?.title ?? "", at)
          yield* sql`INSERT INTO agentwire_runs ${
            sql.insert({
              run_id: run.run_id,
              user_id: run.user_id,
              thread_id: run.thread_id,
              agent_name: storableText(run.agent_name),
              status: run.status,
              started_at: run.started_at,
              ended_at: run.ended_at ?? null,
              final_response: run.final_response === undefined ? null : storableText(run.final_response),
              error_code: run.error_code === undefined ? null : storableText(run.error_code)
            })
          } ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, ended_at = excluded.ended_at,
            final_response = excluded.final_response, error_code = excluded.error_code`
          if (opts?.messages !== undefined) yield* insertMessages(run.user_id, run.thread_id, opts.messages, run.run_id, at)
        })).pipe(Effect.mapError(failWith("record")))
      }),
      threadAccess: Effect.fn("ConversationStore.threadAccess")(function*(key) {
        const rows = yield* sql<{ readonly user_id: string }>`SELECT user_id FROM agentwire_threads WHERE thread_id = ${key.thread_id} LIMIT 16`.pipe(
          Effect.mapError(failWith("access"))
        )
        return rows.length === 0 ? "none" : rows.some((r) => r.user_id === key.user_id) ? "own" : "foreign"
      }),
      listThreads: Effect.fn("ConversationStore.listThreads")(function*(user_id, opts) {
        const limit = Math.min(MAX_THREAD_PAGE, Math.max(1, opts?.limit ?? MAX_THREAD_PAGE))
        const rows = yield* threadsQuery(user_id, limit + 1, opts?.before).pipe(Effect.mapError(failWith("list")))
        const threads = rows.slice(0, limit).map(summaryOf)
        const last = threads.at(-1)
        return rows.length > limit && last !== undefined
          ? { threads, next: { updated_at: last.updated_at, thread_id: last.thread_id } }
          : { threads }
      }),
      getThread: Effect.fn("ConversationStore.getThread")(function*(key) {
        return yield* Effect.gen(function*() {
          const [thread] = yield* sql<ThreadRow>`SELECT t.thread_id, t.title, t.created_at, t.updated_at,
              (SELECT r.status FROM agentwire_runs r WHERE r.user_id = t.user_id AND r.thread_id = t.thread_id
                ORDER BY r.started_at DESC, r.run_id DESC LIMIT 1) AS last_status
            FROM agentwire_threads t WHERE t.user_id = ${key.user_id} AND t.thread_id = ${key.thread_id}`
          if (thread === undefined) return Option.none()
          // bounded answer (boundThread): first the sizes, newest first, then only the rows that can fit, texts cut in the database
          const messageBudget = Math.floor(THREAD_MAX_BYTES * 3 / 4)
          const sizes = yield* sql<{ readonly id: number | string | bigint; readonly chars: number | string | null }>`SELECT id, length(content) AS chars
            FROM agentwire_messages WHERE user_id = ${key.user_id} AND thread_id = ${key.thread_id} ORDER BY id DESC LIMIT ${MAX_THREAD_MESSAGES + 1}`
          let truncated = sizes.length > MAX_THREAD_MESSAGES
          let chars = 0
          let oldest: number | string | bigint | undefined
          for (const row of sizes.slice(0, MAX_THREAD_MESSAGES)) {
            // characters never exceed UTF-8 bytes, so this keeps at least what boundThread keeps
            chars += Math.min(num(row.chars ?? 0), THREAD_MESSAGE_MAX_CHARS)
            if (oldest !== undefined && chars > messageBudget) {
              truncated = true
              break
            }
            oldest = row.id
          }
          const messages = oldest === undefined ? [] : yield* sql<{
            readonly role: "user" | "assistant"
            readonly content: string
            readonly chars: number | string
            readonly run_id: string | null
            readonly created_at: number | string
          }>`SELECT role, substr(content, 1, ${THREAD_MESSAGE_MAX_CHARS}) AS content, length(content) AS chars, run_id, created_at
            FROM agentwire_messages WHERE user_id = ${key.user_id} AND thread_id = ${key.thread_id} AND id >= ${oldest} ORDER BY id ASC`
          const runs = yield* sql<{
            readonly run_id: string
            readonly agent_name: string
            readonly status: RunRecordStatus
            readonly started_at: number | string
            readonly ended_at: number | string | null
            readonly final_response: string | null
            readonly error_code: string | null
          }>`SELECT run_id, agent_name, status, started_at, ended_at, final_response, error_code FROM (
              SELECT run_id, agent_name, status, started_at, ended_at, substr(final_response, 1, ${THREAD_RESPONSE_MAX_CHARS}) AS final_response, error_code
              FROM agentwire_runs WHERE user_id = ${key.user_id} AND thread_id = ${key.thread_id}
              ORDER BY started_at DESC, run_id DESC LIMIT ${MAX_THREAD_MESSAGES}
            ) r ORDER BY started_at ASC, run_id ASC`
          return Option.some(boundThread({
            ...summaryOf(thread),
            ...(truncated ? { truncated: true } : {}),
            messages: messages.map((m): StoredMessage => ({
              role: m.role,
              content: m.content,
              created_at: num(m.created_at),
              ...(m.run_id === null ? {} : { run_id: m.run_id }),
              ...(num(m.chars) > THREAD_MESSAGE_MAX_CHARS ? { truncated: true } : {})
            })),
            runs: runs.map((r): RunRecord => ({
              run_id: r.run_id,
              user_id: key.user_id,
              thread_id: key.thread_id,
              agent_name: r.agent_name,
              status: r.status,
              started_at: num(r.started_at),
              ...(r.ended_at === null ? {} : { ended_at: num(r.ended_at) }),
              ...(r.final_response === null ? {} : { final_response: r.final_response }),
              ...(r.error_code === null ? {} : { error_code: r.error_code })
            }))
          }))
        }).pipe(Effect.mapError(failWith("get")))
      }),
      deleteThread: Effect.fn("ConversationStore.deleteThread")(function*(key) {
        return yield* sql.withTransaction(Effect.gen(function*() {
          const found = yield* sql`SELECT 1 AS found FROM agentwire_threads WHERE user_id = ${key.user_id} AND thread_id = ${key.thread_id}`
          yield* sql`DELETE FROM agentwire_messages WHERE user_id = ${key.user_id} AND thread_id = ${key.thread_id}`
          yield* sql`DELETE FROM agentwire_runs WHERE user_id = ${key.user_id} AND thread_id = ${key.thread_id}`
          yield* sql`DELETE FROM agentwire_threads WHERE user_id = ${key.user_id} AND thread_id = ${key.thread_id}`
          return found.length > 0
        })).pipe(Effect.mapError(failWith("delete")))
      }),
      eraseUser: Effect.fn("ConversationStore.eraseUser")(function*(user_id) {
        return yield* sql.withTransaction(Effect.gen(function*() {
          const count = (table: string) =>
            Effect.map(sql<{ readonly n: number | string }>`SELECT COUNT(*) AS n FROM ${sql(table)} WHERE user_id = ${user_id}`, (rows) => num(rows[0]?.n ?? 0))
          const counts = { threads: yield* count("agentwire_threads"), messages: yield* count("agentwire_messages"), runs: yield* count("agentwire_runs") }
          yield* sql`DELETE FROM agentwire_messages WHERE user_id = ${user_id}`
          yield* sql`DELETE FROM agentwire_runs WHERE user_id = ${user_id}`
          yield* sql`DELETE FROM agentwire_threads WHERE user_id = ${user_id}`
          return counts
        })).pipe(Effect.mapError(failWith("erase")))
      }),
      health: Effect.succeed({ status: "up", backend, pending_writes: 0, dropped_writes: 0, failed_writes: 0 })
    })
  })

/** The error code of a run that a stopped or crashed server left `running`. */
export const INSTANCE_LOST = "INSTANCE_LOST"
const LOST_RESPONSE = "the server stopped before the run ended"

/**
 * Marks every run still `running` as `failed` with error code `INSTANCE_LOST`
 * (ended `at`, ms since the epoch); returns how many. Only for a database one
 * server uses (SQLite): run at startup, before any run starts. Several
 * instances sharing PostgreSQL must not call it (it cannot tell another live
 * instance's runs from lost ones).
 */
export const markLostRuns = (at: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const lost = yield* sql<{ readonly n: number | string }>`SELECT COUNT(*) AS n FROM agentwire_runs WHERE status = 'running'`
    yield* sql`UPDATE agentwire_runs SET status = 'failed', ended_at = ${at}, error_code = ${INSTANCE_LOST},
      final_response = ${LOST_RESPONSE} WHERE status = 'running'`
    return num(lost[0]?.n ?? 0)
  })

/** Migrates, then builds the store; requires a `SqlClient`. */
export const layer = (options: ConversationStoreSqlOptions = {}) =>
  Layer.effect(ConversationStore, Effect.andThen(migrate(), make(options)))
