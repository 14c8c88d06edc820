/**
 * Write-behind for a durable `ConversationStore`: storing history never delays
 * event delivery, and a database that is slow or down degrades history, not
 * streaming.
 *
 * - **Writes from runs** (`append`, `recordRun`) are queued in memory and
 *   return at once; one writer fiber applies them in order. It starts on the
 *   scheduler's next turn (or after `batchWindowMs`), not inside the caller,
 *   so the writes queued meanwhile are applied together: with `transaction`
 *   (the SQL stores) up to `maxBatch` queued writes go in one database
 *   transaction, one commit instead of one per write; a batch that fails is
 *   rolled back whole and its writes are applied one at a time instead, as
 *   without `transaction`.
 * - **A failing write is retried**, in order, with backoff (100 ms doubling to
 *   5 s), for as long as it fails transiently (connection lost, database busy
 *   or locked, timeouts, unclassified errors): nothing behind it is applied
 *   first, nothing is skipped. Meanwhile `health` says `degraded` (with the
 *   last error and the number of writes waiting), which `/ready` reports.
 * - **A write the database refuses for good** (`ConversationStoreError.permanent`:
 *   a constraint or data error) is set aside at once: counted (`failed_writes`),
 *   logged at error level with its error, and the writes behind it go on. A
 *   queued delete or erase refused that way fails its caller with that error.
 * - **Bounded**: at most `maxPending` writes wait (default 10 000, about two per
 *   run). A write arriving when the queue is full is dropped, counted
 *   (`dropped_writes`) and logged at error level: during an outage longer than
 *   the queue lasts, the newest history is lost, loudly.
 * - **Shutdown**: the queue gets `flushOnCloseMs` (default 5 s) to drain; what is
 *   still waiting then is counted as dropped and logged.
 * - **Reads** (`load`, `listThreads`, `getThread`, `threadAccess`) first wait
 *   (at most `readBarrierMs`, default 1 s) for the writes queued before them, so a
 *   client reads its own writes. When that wait ends with writes of the same
 *   user still queued (an outage, a locked database), the database's answer
 *   would be stale (a missing thread, a thread without its newest messages),
 *   so the read fails instead (`ConversationStoreError`, which the thread API
 *   answers as `HISTORY_UNAVAILABLE`). Otherwise they ask the database (and
 *   fail if it is down). The model's `load` is the exception: it reads what is
 *   stored (an agent answers with the stored part of the conversation rather
 *   than with none).
 * - **Deletes** (`deleteThread`, `eraseUser`) go through the same queue, so a
 *   queued write can never bring deleted data back; the caller waits up to
 *   `confirmMs` (default 5 s) for the result, then gets a `ConversationStoreError`
 *   saying the deletion stays queued and is applied when the database answers.
 *
 * Only within one process: several instances on one PostgreSQL each have
 * their own queue (writes of one run come from the one process running it).
 *
 * @module
 */
import { Cause, Deferred, Effect, Exit, Fiber, Layer } from "effect"
import { type ConversationKey, ConversationStore, ConversationStoreError, type StoreHealth } from "../services/ConversationStore.ts"

export interface BufferedOptions {
  /** Writes that may wait (default 10 000). */
  readonly maxPending?: number | undefined
  /** How long a read waits for earlier writes, ms (default 1 000). */
  readonly readBarrierMs?: number | undefined
  /** How long a delete or erase waits for its result, ms (default 5 000). */
  readonly confirmMs?: number | undefined
  /** How long shutdown waits for the queue to drain, ms (default 5 000). */
  readonly flushOnCloseMs?: number | undefined
  /** First retry delay, ms (default 100); doubles up to `retryMaxMs`. */
  readonly retryBaseMs?: number | undefined
  /** Longest retry delay, ms (default 5 000). */
  readonly retryMaxMs?: number | undefined
  /** The clock that stamps queued writes, ms since the epoch (default `Date.now`). */
  readonly now?: (() => number) | undefined
  /**
   * Runs several queued writes in one database transaction (all applied or
   * none); without it, writes are applied one at a time.
   */
  readonly transaction?: ((batch: Effect.Effect<void, ConversationStoreError>) => Effect.Effect<void, unknown>) | undefined
  /** Writes applied in one `transaction` at most (default 32). */
  readonly maxBatch?: number | undefined
  /**
   * With `transaction`: how long the writer, woken by a write, waits for more
   * before applying them, ms (default 0: only the rest of the event-loop turn).
   * A read waiting for the queued writes, or a full batch, ends the wait at once.
   * Real time (a Node timer), not the Effect clock: it only groups writes.
   */
  readonly batchWindowMs?: number | undefined
}

interface Item {
  readonly seq: number
  /** The user whose history this write changes. */
  readonly user_id: string
  readonly op: Effect.Effect<unknown, ConversationStoreError>
  readonly done?: Deferred.Deferred<unknown, ConversationStoreError> | undefined
}

/** Wraps `inner`; the writer fiber lives in the scope (its close flushes). */
export const make = (inner: ConversationStore["Service"], options: BufferedOptions = {}) =>
  Effect.gen(function*() {
    const maxPending = Math.max(1, options.maxPending ?? 10_000)
    const readBarrierMs = options.readBarrierMs ?? 1_000
    const confirmMs = options.confirmMs ?? 5_000
    const flushOnCloseMs = options.flushOnCloseMs ?? 5_000
    const retryBaseMs = options.retryBaseMs ?? 100
    const retryMaxMs = options.retryMaxMs ?? 5_000
    const now = options.now ?? Date.now
    const transaction = options.transaction
    const maxBatch = Math.max(1, options.maxBatch ?? 32)
    const batchWindowMs = transaction === undefined ? 0 : Math.max(0, options.batchWindowMs ?? 0)
    const backend = (yield* inner.health).backend

    const queue: Array<Item> = []
    let enqueued = 0
    let committed = 0
    let dropped = 0
    let failed = 0
    let failing = false
    let lastError: string | undefined
    let wakeWriter: (() => void) | undefined
    /** Ends the writer's batch window early (a reader waits, or a batch is full). */
    let hurryWriter: (() => void) | undefined
    /** Queued writes per user (read-your-writes: a read of a user with writes still queued cannot be answered correctly). */
    const pendingByUser = new Map<string, number>()
    const waiters = new Set<{ readonly seq: number; readonly wake: () => void }>()

    const settle = () => {
      for (const waiter of Array.from(waiters)) {
        if (waiter.seq <= committed) {
          waiters.delete(waiter)
          waiter.wake()
        }
      }
    }

    const enqueue = (user_id: string, op: Effect.Effect<unknown, ConversationStoreError>, done?: Deferred.Deferred<unknown, ConversationStoreError>): boolean => {
      if (queue.length >= maxPending) {
        dropped++
        return false
      }
      queue.push({ seq: ++enqueued, user_id, op, done })
      pendingByUser.set(user_id, (pendingByUser.get(user_id) ?? 0) + 1)
      const wake = wakeWriter
      wakeWriter = undefined
      wake?.()
      if (queue.length >= maxBatch) hurryWriter?.()
      return true
    }

    /** Takes the head of the queue off (applied or set aside). */
    const dequeue = () => {
      const item = queue.shift()!
      const left = (pendingByUser.get(item.user_id) ?? 1) - 1
      if (left > 0) pendingByUser.set(item.user_id, left)
      else pendingByUser.delete(item.user_id)
      committed = item.seq
    }

    const write = (operation: string, user_id: string, op: Effect.Effect<unknown, ConversationStoreError>): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (enqueue(user_id, op)) return Effect.void
        // loud, but not one line per lost write: the first, then every 1000th
        return dropped === 1 || dropped % 1000 === 0
          ? Effect.logError("history write dropped: the write queue is full").pipe(
            Effect.annotateLogs({ operation, dropped_writes: dropped, pending_writes: queue.length, last_error: lastError ?? "" })
          )
          : Effect.void
      })

    /** Waits (at most `ms`) until every write queued before now is applied. */
    const barrier = (ms: number) =>
      Effect.suspend(() => {
        const seq = enqueued
        if (committed >= seq) return Effect.void
        return Effect.callback<void>((resume) => {
          const waiter = { seq, wake: () => resume(Effect.void) }
          waiters.add(waiter)
          hurryWriter?.()
          return Effect.sync(() => waiters.delete(waiter))
        }).pipe(Effect.timeoutOption(ms), Effect.asVoid)
      })

    const idle = Effect.callback<void>((resume) => {
      if (queue.length > 0) return resume(Effect.void)
      wakeWriter = () => resume(Effect.void)
      return Effect.sync(() => void (wakeWriter = undefined))
    })

    // the writes arriving within the window join the batch
    const batchWindow = Effect.callback<void>((resume) => {
      if (waiters.size > 0 || queue.length >= maxBatch) return resume(Effect.void)
      const done = () => {
        hurryWriter = undefined
        clearTimeout(timer)
        resume(Effect.void)
      }
      const timer = setTimeout(done, batchWindowMs)
      hurryWriter = done
      return Effect.sync(() => {
        hurryWriter = undefined
        clearTimeout(timer)
      })
    })

    /**
     * Applies the first `count` queued writes in one transaction; true when all
     * were committed (then they are dequeued and their callers answered).
     */
    const applyBatch = (count: number): Effect.Effect<boolean> =>
      Effect.suspend(() => {
        const batch = queue.slice(0, count)
        const results: Array<unknown> = []
        const body = Effect.forEach(batch, (item) => Effect.map(item.op, (result) => void results.push(result)), { discard: true })
        return Effect.map(Effect.exit(transaction!(body)), (exit) => {
          if (Exit.isFailure(exit)) return false
          for (let i = 0; i < batch.length; i++) {
            dequeue()
            const done = batch[i]!.done
            if (done !== undefined) Deferred.doneUnsafe(done, Exit.succeed(results[i]))
          }
          settle()
          return true
        })
      })

    const writer: Effect.Effect<never> = Effect.gen(function*() {
      let attempt = 0
      // after a batch failed, its writes go one at a time
      let solo = 0
      // writes queued before the writer first ran get the same window as later ones
      let first = true
      while (true) {
        if (queue.length === 0 || first) {
          first = false
          yield* idle
          // woken inside the caller: let the writes of this event-loop turn (or of the window) join the batch
          yield* batchWindowMs > 0 ? batchWindow : Effect.yieldNow
        }
        if (transaction !== undefined && solo === 0 && queue.length > 1) {
          const count = Math.min(queue.length, maxBatch)
          if (yield* applyBatch(count)) {
            if (failing) yield* Effect.logInfo("history writes resumed").pipe(Effect.annotateLogs({ pending_writes: queue.length }))
            failing = false
            lastError = undefined
            attempt = 0
            continue
          }
          solo = count
        }
        const item = queue[0]!
        const exit = yield* Effect.exit(item.op)
        if (Exit.isSuccess(exit)) {
          dequeue()
          if (solo > 0) solo--
          if (failing) yield* Effect.logInfo("history writes resumed").pipe(Effect.annotateLogs({ pending_writes: queue.length }))
          failing = false
          lastError = undefined
          attempt = 0
          if (item.done !== undefined) Deferred.doneUnsafe(item.done, exit)
          settle()
          continue
        }
        const message = Cause.pretty(exit.cause).split("\n", 1)[0]!.slice(0, 300)
        const error = Cause.findErrorOption(exit.cause)
        if (error._tag === "Some" && error.value.permanent === true) {
          // refused for good: retrying cannot help, and must not hold back the writes behind it
          dequeue()
          if (solo > 0) solo--
          failed++
          yield* Effect.logError("history write refused by the database: set aside; the writes behind it go on").pipe(
            Effect.annotateLogs({ error: message, operation: error.value.operation, failed_writes: failed, pending_writes: queue.length })
          )
          if (item.done !== undefined) Deferred.doneUnsafe(item.done, exit)
          settle()
          continue
        }
        if (!failing) {
          yield* Effect.logWarning("history write failed: retrying; history is degraded, streaming is not").pipe(
            Effect.annotateLogs({ error: message, pending_writes: queue.length })
          )
        }
        failing = true
        lastError = message
        attempt++
        yield* Effect.sleep(Math.min(retryMaxMs, retryBaseMs * 2 ** Math.min(attempt - 1, 16)))
      }
    })
    const writerFiber = yield* Effect.forkScoped(writer)

    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        yield* barrier(flushOnCloseMs)
        yield* Fiber.interrupt(writerFiber)
        if (queue.length > 0) {
          dropped += queue.length
          yield* Effect.logError("history writes lost at shutdown: the database did not take them in time").pipe(
            Effect.annotateLogs({ lost_writes: queue.length, last_error: lastError ?? "" })
          )
          queue.length = 0
          pendingByUser.clear()
        }
      })
    )

    /** A delete through the queue, waited for at most `confirmMs`. */
    const confirmed = <A>(operation: "delete" | "erase", user_id: string, op: Effect.Effect<A, ConversationStoreError>) =>
      Effect.gen(function*() {
        const done = Deferred.makeUnsafe<unknown, ConversationStoreError>()
        if (!enqueue(user_id, op, done)) {
          return yield* new ConversationStoreError({ operation, message: "history is unavailable: its write queue is full; retry later" })
        }
        const result = yield* Deferred.await(done).pipe(Effect.timeoutOption(confirmMs))
        if (result._tag === "None") {
          return yield* new ConversationStoreError({
            operation,
            message: "history is unavailable: the deletion is queued and is applied when the database answers again; retry to confirm"
          })
        }
        return result.value as A
      })

    const health: Effect.Effect<StoreHealth> = Effect.sync(() => ({
      status: failing || queue.length >= maxPending ? "degraded" : "up",
      backend,
      pending_writes: queue.length,
      dropped_writes: dropped,
      failed_writes: failed,
      ...(lastError === undefined ? {} : { last_error: lastError })
    }))

    /** A read after the user's queued writes: fails when some are still queued once the barrier gives up (the answer would be stale). */
    const consistent = <A>(operation: ConversationStoreError["operation"], user_id: string, read: Effect.Effect<A, ConversationStoreError>) =>
      Effect.andThen(
        barrier(readBarrierMs),
        Effect.suspend(() => {
          const waiting = pendingByUser.get(user_id) ?? 0
          return waiting === 0 ? read : Effect.fail(
            new ConversationStoreError({
              operation,
              message: `history is unavailable: ${waiting} of this user's writes are waiting for the database${lastError === undefined ? "" : ` (${lastError})`}; retry later`
            })
          )
        })
      )

    return ConversationStore.of({
      // the model reads what is stored (see the module docs)
      load: (key, opts) => Effect.andThen(barrier(readBarrierMs), inner.load(key, opts)),
      // stamped when queued, not when applied
      append: (key, messages, opts) => Effect.suspend(() => write("append", key.user_id, inner.append(key, messages, { ...opts, at: opts?.at ?? now() }))),
      recordRun: (run, opts) => Effect.suspend(() => write("record", run.user_id, inner.recordRun(run, { ...opts, at: opts?.at ?? now() }))),
      ...(inner.markRunLost === undefined ? {} : {
        markRunLost: (key: ConversationKey & { readonly run_id: string }, at: number) =>
          Effect.suspend(() => write("lost", key.user_id, inner.markRunLost!(key, at)))
      }),
      threadAccess: (key) => consistent("access", key.user_id, inner.threadAccess(key)),
      listThreads: (user_id, opts) => consistent("list", user_id, inner.listThreads(user_id, opts)),
      getThread: (key) => consistent("get", key.user_id, inner.getThread(key)),
      deleteThread: (key) => confirmed("delete", key.user_id, inner.deleteThread(key)),
      eraseUser: (user_id) => confirmed("erase", user_id, inner.eraseUser(user_id)),
      health
    })
  })

/** `make` over the store of `inner`'s layer. */
export const layer = <E, R>(inner: Layer.Layer<ConversationStore, E, R>, options: BufferedOptions = {}) =>
  Layer.effect(ConversationStore, Effect.flatMap(ConversationStore, (store) => make(store, options))).pipe(Layer.provide(inner))
