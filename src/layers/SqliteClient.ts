/**
 * An `effect/sql` `SqlClient` over Node 24's built-in `node:sqlite`
 * (`@effect/sql-sqlite-node` has no build for effect 4.1).
 *
 * One connection, used by one fiber at a time (a semaphore); statements run
 * synchronously on the event loop (a typical history write takes tens of
 * microseconds). The file is opened in WAL mode. Because a statement blocks
 * the whole process while it waits for a lock, the busy timeout is short
 * (`busyTimeoutMs`, default `DEFAULT_BUSY_TIMEOUT_MS` = 10 ms): a database
 * locked by another process fails fast with `SQLITE_BUSY` (reason
 * `LockTimeoutError`, retryable) instead of freezing the event loop; callers
 * retry later (`ConversationStoreBuffered` does, with backoff). Errors are
 * `SqlError`s with classified reasons (`UniqueViolation`, …).
 *
 * Hot write paths may bypass `effect/sql`'s statement machinery (which costs
 * several times what SQLite itself spends on a small insert) through `direct`:
 * synchronous prepared statements on the same connection, under the same lock.
 *
 * @module
 */
import { Context, Effect, Layer, Semaphore, Stream } from "effect"
import { Reactivity } from "effect/reactivity"
import { SqlClient, type SqlConnection, SqlError, Statement } from "effect/sql"
import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite"

// node:sqlite puts the SQLite result code on `errcode`; classifySqliteError reads `code`/`errno`
const fail = (operation: string) => (cause: unknown) => {
  const errno = (cause as { errcode?: number }).errcode
  const c = errno === undefined ? cause : Object.assign(cause as object, { errno })
  return new SqlError.SqlError({ reason: SqlError.classifySqliteError(c, { operation }) })
}

/** The default busy timeout, ms: how long a statement may block the event loop waiting for another connection's lock. */
export const DEFAULT_BUSY_TIMEOUT_MS = 10

/** SQLite's page cache for the connection, KiB (16 MiB; SQLite's default is 2 MiB): memory only as the database grows. */
export const CACHE_KIB = 16 * 1024

/** Statements kept prepared (by SQL text). */
const STATEMENT_CACHE = 200

/** Prepared statements of one connection, by SQL text (cached). */
export type Prepare = (sql: string) => StatementSync

/** Direct, synchronous access to the connection of a client made by `make` (see `direct`). */
export interface DirectSqlite {
  /**
   * Runs `f` with the connection's prepared statements: inside the calling
   * fiber's open transaction of this client when there is one (`withTransaction`;
   * then as part of it, and a failure fails that transaction), else in a
   * transaction of its own under the connection's lock (rolled back when `f`
   * throws). `f` must be synchronous. A thrown error becomes a `SqlError`.
   */
  readonly write: <A>(f: (prepare: Prepare) => A) => Effect.Effect<A, SqlError.SqlError>
}

const directs = new WeakMap<SqlClient.SqlClient, DirectSqlite>()

/** The direct access of a client made by `make`; undefined for any other client (PostgreSQL, …). */
export const direct = (client: SqlClient.SqlClient): DirectSqlite | undefined => directs.get(client)

/** A `SqlClient` on the SQLite database at `filename` (`:memory:` for a private in-memory one); closed with the scope. */
export const make = (filename: string, options: { readonly busyTimeoutMs?: number | undefined } = {}) =>
  Effect.gen(function*() {
    const db = yield* Effect.acquireRelease(
      Effect.try({
        try: () => {
          const db = new DatabaseSync(filename)
          db.exec(`PRAGMA busy_timeout = ${Math.max(0, Math.floor(options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS))}`)
          if (filename !== ":memory:") db.exec("PRAGMA journal_mode = WAL")
          db.exec("PRAGMA synchronous = NORMAL")
          // a page cache larger than SQLite's 2 MiB default: the index pages a run's history write
          // changes are read from memory, not with a read syscall each, until the database outgrows it
          db.exec(`PRAGMA cache_size = -${CACHE_KIB}`)
          return db
        },
        catch: fail("open")
      }),
      (db) => Effect.sync(() => db.close())
    )
    const cache = new Map<string, StatementSync>()
    const prepare = (sql: string) => {
      let statement = cache.get(sql)
      if (statement === undefined) {
        statement = db.prepare(sql)
        cache.set(sql, statement)
        if (cache.size > STATEMENT_CACHE) cache.delete(cache.keys().next().value!)
      }
      return statement
    }
    const run = (sql: string, params: ReadonlyArray<unknown>) =>
      Effect.try({
        try: () => {
          const statement = prepare(sql)
          statement.setReturnArrays(false)
          return statement.all(...(params as Array<SQLInputValue>))
        },
        catch: fail("execute")
      })
    const values = (sql: string, params: ReadonlyArray<unknown>) =>
      Effect.try({
        try: () => {
          const statement = prepare(sql)
          statement.setReturnArrays(true)
          return statement.all(...(params as Array<SQLInputValue>)) as unknown as ReadonlyArray<ReadonlyArray<unknown>>
        },
        catch: fail("executeValues")
      })
    const unprepared = (sql: string, params: ReadonlyArray<unknown>) =>
      Effect.try({
        try: () => params.length === 0 && !/^\s*(select|with|pragma)\b/i.test(sql) ? (db.exec(sql), []) : db.prepare(sql).all(...(params as Array<SQLInputValue>)),
        catch: fail("executeUnprepared")
      })
    const connection: SqlConnection.Connection = {
      execute: (sql, params, transform) => Effect.map(run(sql, params), (rows) => transform ? transform(rows) : rows),
      executeRaw: run,
      executeStream: (sql, params, transform) =>
        Stream.fromIterableEffect(Effect.map(run(sql, params), (rows) => transform ? transform(rows) : rows)),
      executeValues: values,
      executeValuesUnprepared: values,
      executeUnprepared: (sql, params, transform) => Effect.map(unprepared(sql, params), (rows) => transform ? transform(rows) : rows)
    }
    const semaphore = yield* Semaphore.make(1)
    const acquirers = SqlClient.makeSqliteAcquirers({ connection: Effect.succeed(connection), semaphore })
    const client = yield* SqlClient.make({ ...acquirers, compiler: Statement.makeCompilerSqlite(), driver: "node:sqlite", spanAttributes: [] })
    const own = <A>(f: (prepare: Prepare) => A) =>
      Effect.try({
        try: () => {
          db.exec("BEGIN")
          try {
            const result = f(prepare)
            db.exec("COMMIT")
            return result
          } catch (error) {
            if (db.isTransaction) db.exec("ROLLBACK")
            throw error
          }
        },
        catch: fail("execute")
      })
    directs.set(client, {
      write: (f) =>
        Effect.withFiber((fiber) =>
          // the fiber's own transaction holds the lock: its statements join it
          Context.getOption(fiber.context, client.transactionService)._tag === "Some"
            ? Effect.try({ try: () => f(prepare), catch: fail("execute") })
            : semaphore.withPermit(own(f))
        )
    })
    return client
  }).pipe(Effect.provide(Reactivity.layer))

/** The client as a layer. */
export const layer = (filename: string, options: { readonly busyTimeoutMs?: number | undefined } = {}): Layer.Layer<SqlClient.SqlClient, SqlError.SqlError> =>
  Layer.effect(SqlClient.SqlClient, make(filename, options))
