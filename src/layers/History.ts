/**
 * Where the server keeps history (threads, messages, run summaries): the
 * `ConversationStore` of the composition.
 *
 * - `AGENTWIRE_DATABASE_URL` set (`postgres://user:password@host:port/db`):
 *   PostgreSQL through `@effect/sql-pg`, for several instances sharing history.
 * - Otherwise SQLite (Node's built-in `node:sqlite`), in the file
 *   `agentwire.db` of `AGENTWIRE_DATA_DIR` (default `./data`, created on start).
 *   Back it up by copying the file (with the server stopped, or with
 *   `sqlite3 agentwire.db ".backup copy.db"` while it runs).
 *
 * Either way the schema is migrated at startup (`effect/sql` `Migrator`), and
 * writes go through `ConversationStoreBuffered` (off the hot path; the writes
 * queued within `BATCH_WINDOW_MS` are applied in one transaction). A database
 * that cannot be opened or migrated is a `HistoryStartError` naming it, never
 * with its password: `src/main.ts` prints it and exits 3.
 *
 * @module
 */
import { PgClient } from "@effect/sql-pg"
import { Config, Context, Data, Effect, Layer, Option, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { mkdirSync, statSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { ConfigInvalidError } from "../services/AgentwireConfig.ts"
import { ConversationStore, type ConversationStoreError } from "../services/ConversationStore.ts"
import * as ConversationStoreBuffered from "./ConversationStoreBuffered.ts"
import * as ConversationStoreSql from "./ConversationStoreSql.ts"
import * as SqliteClient from "./SqliteClient.ts"

/** Default `AGENTWIRE_DATA_DIR`. */
export const DEFAULT_DATA_DIR = "./data"

/**
 * How long the history writer gathers writes before applying them in one
 * transaction, ms: a commit costs more than the statements of a run's record.
 * `bench/history-writes.ts` (2026-11-30): 78–123 µs of CPU per run (two
 * records) batched, 275 with one transaction per write, 365–390 before
 * (effect/sql statements, one transaction per write). A crash loses at most
 * this much more history; a read waiting for the writes ends the wait at once.
 */
export const BATCH_WINDOW_MS = 10

/** The SQLite file inside the data directory. */
export const SQLITE_FILE = "agentwire.db"

/** Where history goes. */
export interface HistorySettings {
  /** `AGENTWIRE_DATA_DIR`: the SQLite database's directory (used when no database URL is set). */
  readonly dataDir: string
  /** `AGENTWIRE_DATABASE_URL`: a PostgreSQL URL; never logged. */
  readonly databaseUrl: Option.Option<Redacted.Redacted<string>>
}

/** The history database cannot be opened or migrated; `database` names it without a password. */
export class HistoryStartError extends Data.TaggedError("HistoryStartError")<{
  readonly database: string
  readonly reason: string
}> {
  override get message(): string {
    return `history database ${this.database} cannot be used: ${this.reason}`
  }
}

/** A PostgreSQL URL as it may be shown: scheme, user, host, port and database; never the password. */
export const describeUrl = (url: string): string => {
  const parsed = URL.parse(url)
  if (parsed === null) return "postgres (AGENTWIRE_DATABASE_URL is not a valid URL)"
  const user = parsed.username === "" ? "" : `${decodeURIComponent(parsed.username)}@`
  return `${parsed.protocol}//${user}${parsed.host}${parsed.pathname}`
}

/**
 * Why a database could not be opened, in words an operator can act on: the
 * driver's own message (`cause.message`, passwords hidden by `hide`), after a
 * hint for the usual cases: wrong user or password (SQLSTATE 28…), a missing
 * database (3D000), connection refused, unknown host, a file that is not an
 * SQLite database or is corrupt (SQLite 26 / 11).
 */
export const describeStartFailure = (error: unknown, hide: (text: string) => string = (t) => t): string => {
  const reason = (error as { readonly reason?: { readonly _tag?: unknown; readonly cause?: unknown } } | null)?.reason
  const cause = reason?.cause as { readonly message?: unknown; readonly code?: unknown; readonly errcode?: unknown } | null | undefined
  const detail = typeof cause?.message === "string" && cause.message.length > 0
    ? cause.message
    : error instanceof Error ? error.message : String(error)
  const code = typeof cause?.code === "string" ? cause.code : ""
  const sqlite = typeof cause?.errcode === "number" ? cause.errcode & 0xff : undefined
  const hint = reason?._tag === "AuthenticationError" || code.startsWith("28")
    ? "authentication failed: check the user and password in AGENTWIRE_DATABASE_URL"
    : code === "3D000"
    ? "the database does not exist: create it (createdb) or fix its name in AGENTWIRE_DATABASE_URL"
    : code === "ECONNREFUSED"
    ? "connection refused: is PostgreSQL running and listening at that host and port?"
    : code === "ENOTFOUND" || code === "EAI_AGAIN"
    ? "host not found"
    : sqlite === 26 || sqlite === 11
    ? "the file is not an SQLite database or is corrupt: move it away (a new one is created) or restore a backup"
    : undefined
  return hide(hint === undefined ? detail : `${hint} (${detail})`)
}

/** Reads `AGENTWIRE_DATA_DIR` and `AGENTWIRE_DATABASE_URL`. */
export const settingsFromEnv: Effect.Effect<HistorySettings, ConfigInvalidError> = Effect.gen(function*() {
  const read = (variable: string) =>
    Config.String(variable).pipe(
      Config.option,
      Effect.map(Option.filter((value) => value.trim().length > 0)),
      Effect.mapError((error) => new ConfigInvalidError({ variable, expected: `readable (${error.message})` }))
    )
  const dataDir = Option.getOrElse(yield* read("AGENTWIRE_DATA_DIR"), () => DEFAULT_DATA_DIR).trim()
  const url = yield* read("AGENTWIRE_DATABASE_URL")
  if (Option.isSome(url) && !/^postgres(ql)?:\/\/[^/]/.test(url.value.trim())) {
    // the value may hold a password: never echoed
    return yield* new ConfigInvalidError({ variable: "AGENTWIRE_DATABASE_URL", expected: "a PostgreSQL URL (postgres://user:password@host:5432/database)" })
  }
  return { dataDir, databaseUrl: Option.map(url, (u) => Redacted.make(u.trim())) }
})

/** Options of the durable layers. */
export interface HistoryLayerOptions extends ConversationStoreBuffered.BufferedOptions {
  /** PostgreSQL: connections in the pool (default 4). */
  readonly maxConnections?: number | undefined
  /** PostgreSQL: how long connecting may take (default 5 seconds). */
  readonly connectTimeoutMs?: number | undefined
}

/** Migrates the database of `sql`, then builds the buffered store on it. */
const storeOn = (sql: SqlClient.SqlClient, backend: string, database: string, options: HistoryLayerOptions, hide: (text: string) => string) =>
  Effect.gen(function*() {
    const applied = yield* ConversationStoreSql.migrate().pipe(
      Effect.provideService(SqlClient.SqlClient, sql),
      Effect.mapError((e) => new HistoryStartError({ database, reason: `migration failed: ${describeStartFailure(e, hide)}` }))
    )
    if (applied.length > 0) yield* Effect.logDebug("history schema migrated").pipe(Effect.annotateLogs({ database, migrations: applied.join(",") }))
    const inner = yield* ConversationStoreSql.make({ backend }).pipe(Effect.provideService(SqlClient.SqlClient, sql))
    yield* Effect.logDebug("history").pipe(Effect.annotateLogs({ backend, database }))
    // the writes queued within BATCH_WINDOW_MS are applied in one transaction: one commit for several runs' records
    const transaction = (batch: Effect.Effect<void, ConversationStoreError>) => sql.withTransaction(batch)
    return yield* ConversationStoreBuffered.make(inner, { transaction, batchWindowMs: BATCH_WINDOW_MS, ...options })
  })

const errorCode = (e: unknown): string | undefined =>
  typeof e === "object" && e !== null && "code" in e && typeof e.code === "string" ? e.code : undefined

/**
 * `mkdir -p` one directory at a time. Node's `mkdirSync(dir, { recursive: true })`
 * loops for ever where `mkdir` answers ENOENT under an existing parent (under
 * `/proc`, for one), which hung startup; this walks up to the first existing
 * ancestor (at most the path's depth) and creates each missing level, so every
 * failure is an error naming the path (ENOENT, EACCES, EROFS, or "… is not a directory").
 */
const ensureDirectory = (dir: string): void => {
  const missing: Array<string> = []
  for (let at = dir; ; at = dirname(at)) {
    try {
      if (!statSync(at).isDirectory()) throw new Error(`${at} is not a directory`)
      break
    } catch (e) {
      // ENOTDIR: some ancestor is a file; walking up names it
      const code = errorCode(e)
      if ((code !== "ENOENT" && code !== "ENOTDIR") || dirname(at) === at) throw e
      missing.push(at)
    }
  }
  for (const level of missing.reverse()) {
    try {
      mkdirSync(level)
    } catch (e) {
      if (errorCode(e) !== "EEXIST") throw e
    }
  }
}

/** SQLite in `dataDir/agentwire.db` (the directory is created). */
export const layerSqlite = (dataDir: string, options: HistoryLayerOptions = {}): Layer.Layer<ConversationStore, HistoryStartError> =>
  Layer.effect(ConversationStore, Effect.gen(function*() {
    const file = join(resolve(dataDir), SQLITE_FILE)
    const database = `sqlite:${file}`
    yield* Effect.try({
      try: () => ensureDirectory(resolve(dataDir)),
      catch: (e) => new HistoryStartError({ database, reason: `cannot create AGENTWIRE_DATA_DIR: ${e instanceof Error ? e.message : String(e)}` })
    })
    // at startup (nothing is served yet) waiting up to 5 s for another process's lock is fine;
    // afterwards every statement blocks the event loop, so the timeout drops to a few ms
    const sql = yield* SqliteClient.make(file, { busyTimeoutMs: 5000 }).pipe(
      Effect.mapError((e) => new HistoryStartError({ database, reason: describeStartFailure(e) }))
    )
    const store = yield* storeOn(sql, "sqlite", database, options, (t) => t)
    // one server per SQLite file: a run still `running` was lost with the previous process
    const lost = yield* ConversationStoreSql.markLostRuns(Date.now()).pipe(
      Effect.provideService(SqlClient.SqlClient, sql),
      Effect.mapError((e) => new HistoryStartError({ database, reason: `cannot mark lost runs: ${e.message}` }))
    )
    if (lost > 0) {
      yield* Effect.logWarning("runs left running by the previous process marked failed (INSTANCE_LOST)").pipe(Effect.annotateLogs({ runs: lost, database }))
    }
    yield* sql.unsafe(`PRAGMA busy_timeout = ${SqliteClient.DEFAULT_BUSY_TIMEOUT_MS}`).pipe(
      Effect.mapError((e) => new HistoryStartError({ database, reason: e.message }))
    )
    // a database file deleted or replaced under the running server would take every later write with it,
    // silently: health compares the file with the one opened and says so
    const opened = fileIdentity(file)
    return ConversationStore.of({
      ...store,
      health: Effect.map(store.health, (health) => {
        const now = fileIdentity(file)
        return opened !== undefined && now === opened ? health : {
          ...health,
          status: "degraded" as const,
          last_error: `the database file ${file} was deleted or replaced while the server runs: writes go to the old file; restart the server to open the new one`
        }
      })
    })
  }))

/** `dev:ino` of a file, or undefined when it is gone. */
const fileIdentity = (file: string): string | undefined => {
  try {
    const stat = statSync(file)
    return `${stat.dev}:${stat.ino}`
  } catch {
    return undefined
  }
}

/** PostgreSQL at `url`. */
export const layerPostgres = (url: Redacted.Redacted<string>, options: HistoryLayerOptions = {}): Layer.Layer<ConversationStore, HistoryStartError> =>
  Layer.effect(ConversationStore, Effect.gen(function*() {
    const text = Redacted.value(url)
    const database = describeUrl(text)
    const password = URL.parse(text)?.password ?? ""
    const hide = (t: string) => (password.length > 0 ? t.replaceAll(password, "***").replaceAll(decodeURIComponent(password), "***") : t)
    const context = yield* Layer.build(PgClient.layer({
      url,
      maxConnections: options.maxConnections ?? 4,
      connectTimeout: `${options.connectTimeoutMs ?? 5000} millis`
    })).pipe(Effect.mapError((e) => new HistoryStartError({ database, reason: describeStartFailure(e, hide) })))
    const sql = Context.get(context, SqlClient.SqlClient)
    // the pool may connect lazily: make sure the database answers now
    yield* sql`SELECT 1`.pipe(
      Effect.timeoutOrElse({ duration: `${(options.connectTimeoutMs ?? 5000) + 1000} millis`, orElse: () => Effect.fail(new HistoryStartError({ database, reason: "no answer (timed out)" })) }),
      Effect.mapError((e) => e._tag === "HistoryStartError" ? e : new HistoryStartError({ database, reason: describeStartFailure(e, hide) }))
    )
    return yield* storeOn(sql, "postgres", database, options, hide)
  }))

/** PostgreSQL when `databaseUrl` is set, else SQLite in `dataDir`. */
export const layer = (settings: HistorySettings, options: HistoryLayerOptions = {}): Layer.Layer<ConversationStore, HistoryStartError> =>
  Option.match(settings.databaseUrl, {
    onNone: () => layerSqlite(settings.dataDir, options),
    onSome: (url) => layerPostgres(url, options)
  })
