/**
 * The thread API (issue 14), shared by the WebSocket (`list_threads`,
 * `get_thread`, `delete_thread`) and HTTP (`server/ThreadRoutes.ts`).
 *
 * Owner only: every operation takes the caller's `user_id`, and another user's
 * thread is indistinguishable from an unknown one (`THREAD_NOT_FOUND`). A store
 * that cannot answer gives `HISTORY_UNAVAILABLE` (streaming is not affected).
 * Deleting a thread stops its runs in flight first and also forgets their
 * retained events in the run log (`RunLog.eraseThread`); erasing a user stops all
 * their runs, then deletes their threads, messages, run summaries and retained
 * events.
 *
 * Without a `ConversationStore` in context, every operation answers
 * `HISTORY_UNAVAILABLE`.
 *
 * @module
 */
import { Data, Effect, FiberSet, Option } from "effect"
import type { DeleteThread, GetThread, ListThreads, ServerMessage, Thread, ThreadInfo } from "../protocol/Protocol.ts"
import {
  boundThread,
  ConversationStore,
  type ConversationStoreError,
  MAX_THREAD_PAGE,
  type ThreadCursor,
  type ThreadDetail,
  type ThreadSummary
} from "../services/ConversationStore.ts"
import { ExecutionEngineFactory } from "../services/ExecutionEngineFactory.ts"
import { RunLog, type RunLogUnavailableError } from "../services/RunLog.ts"

/** Threads per page when the client does not say. */
export const DEFAULT_THREAD_PAGE = 20

/** Why a thread request was refused; `code` is the wire error code. */
export class ThreadRequestError extends Data.TaggedError("ThreadRequestError")<{
  readonly code: "THREAD_NOT_FOUND" | "HISTORY_UNAVAILABLE" | "INVALID_MESSAGE"
  readonly message: string
}> {
  /** The HTTP status of the refusal. */
  get status(): 400 | 404 | 503 {
    return this.code === "THREAD_NOT_FOUND" ? 404 : this.code === "INVALID_MESSAGE" ? 400 : 503
  }
}

const iso = (ms: number) => new Date(ms).toISOString()

/** The opaque `before` cursor of a thread page: `<updated_at ms>:<thread_id>`. */
export const encodeCursor = (cursor: ThreadCursor): string => `${cursor.updated_at}:${cursor.thread_id}`

/** Reads a `before` cursor; undefined when it is not one. */
export const decodeCursor = (text: string): ThreadCursor | undefined => {
  const match = /^(\d{1,16}):([A-Za-z0-9._:-]{1,128})$/.exec(text)
  return match === null ? undefined : { updated_at: Number(match[1]), thread_id: match[2]! }
}

/** A thread list entry on the wire. */
export const threadInfo = (t: ThreadSummary): ThreadInfo => ({
  thread_id: t.thread_id,
  title: t.title,
  created_at: iso(t.created_at),
  updated_at: iso(t.updated_at),
  ...(t.last_status === undefined ? {} : { last_status: t.last_status })
})

/** A whole thread on the wire (without `type`). */
export const threadBody = (t: ThreadDetail): Omit<Thread, "type" | "request_id"> => ({
  ...threadInfo(t),
  messages: t.messages.map((m) => ({
    role: m.role,
    content: m.content,
    ...(m.run_id === undefined ? {} : { run_id: m.run_id }),
    created_at: iso(m.created_at),
    ...(m.truncated === true ? { truncated: true } : {})
  })),
  runs: t.runs.map((r) => ({
    run_id: r.run_id,
    agent_name: r.agent_name,
    status: r.status,
    started_at: iso(r.started_at),
    ...(r.ended_at === undefined ? {} : { ended_at: iso(r.ended_at) }),
    ...(r.final_response === undefined ? {} : { final_response: r.final_response }),
    ...(r.error_code === undefined ? {} : { error_code: r.error_code })
  })),
  ...(t.truncated === true ? { truncated: true } : {})
})

const unavailable = (e: ConversationStoreError | RunLogUnavailableError) => new ThreadRequestError({ code: "HISTORY_UNAVAILABLE", message: e.message })
const notFound = (thread_id: string) =>
  new ThreadRequestError({ code: "THREAD_NOT_FOUND", message: `no thread ${JSON.stringify(thread_id.slice(0, 128))}` })

/** What the thread API can do for one caller; built from the services in context. */
export interface ThreadApi {
  readonly list: (
    user_id: string,
    options: { readonly before?: string | undefined; readonly limit?: number | undefined }
  ) => Effect.Effect<{ readonly threads: ReadonlyArray<ThreadInfo>; readonly next_before?: string }, ThreadRequestError>
  readonly get: (user_id: string, thread_id: string) => Effect.Effect<Omit<Thread, "type" | "request_id">, ThreadRequestError>
  /** Deletes the thread (stopping its runs first). Uninterruptible: once called, carried out even if its caller goes away. */
  readonly remove: (user_id: string, thread_id: string) => Effect.Effect<void, ThreadRequestError>
  /**
   * Erases everything of the user; returns what was removed (`events`: retained runs of the run log).
   * Uninterruptible, as `remove`.
   */
  readonly erase: (user_id: string) => Effect.Effect<
    { readonly threads: number; readonly messages: number; readonly runs: number; readonly events: number },
    ThreadRequestError
  >
}

/** The API over the `ConversationStore`, `ExecutionEngineFactory` and `RunLog` in context (each optional). */
export const makeApi: Effect.Effect<ThreadApi> = Effect.gen(function*() {
  const store = Option.getOrUndefined(yield* Effect.serviceOption(ConversationStore))
  const engines = Option.getOrUndefined(yield* Effect.serviceOption(ExecutionEngineFactory))
  const log = Option.getOrUndefined(yield* Effect.serviceOption(RunLog))
  const withStore = <A>(f: (store: ConversationStore["Service"]) => Effect.Effect<A, ThreadRequestError>) =>
    store === undefined
      ? Effect.fail(new ThreadRequestError({ code: "HISTORY_UNAVAILABLE", message: "this server keeps no history (no ConversationStore)" }))
      : f(store)

  return {
    list: (user_id, options) =>
      withStore((store) =>
        Effect.gen(function*() {
          const before = options.before === undefined ? undefined : decodeCursor(options.before)
          if (options.before !== undefined && before === undefined) {
            return yield* new ThreadRequestError({ code: "INVALID_MESSAGE", message: "before must be the next_before of an earlier page" })
          }
          const limit = options.limit ?? DEFAULT_THREAD_PAGE
          if (!Number.isInteger(limit) || limit < 1 || limit > MAX_THREAD_PAGE) {
            return yield* new ThreadRequestError({ code: "INVALID_MESSAGE", message: `limit must be an integer from 1 to ${MAX_THREAD_PAGE}` })
          }
          const page = yield* store.listThreads(user_id, { before, limit }).pipe(Effect.mapError(unavailable))
          return {
            threads: page.threads.map(threadInfo),
            ...(page.next === undefined ? {} : { next_before: encodeCursor(page.next) })
          }
        })
      ),
    get: (user_id, thread_id) =>
      withStore((store) =>
        store.getThread({ user_id, thread_id }).pipe(
          Effect.mapError(unavailable),
          Effect.flatMap(Option.match({ onNone: () => Effect.fail(notFound(thread_id)), onSome: (t) => Effect.succeed(threadBody(boundThread(t))) }))
        )
      ),
    // a deletion or an erase the server received is carried out even when the socket or the request goes away
    // meanwhile (bounded all the same: each step is, the stop by the engine and the store's calls by their timeouts)
    remove: (user_id, thread_id) =>
      Effect.uninterruptible(withStore((store) =>
        Effect.gen(function*() {
          // ownership first: stopping runs of a thread that is not the caller's must not happen
          const access = yield* store.threadAccess({ user_id, thread_id }).pipe(Effect.mapError(unavailable))
          if (access !== "own") return yield* notFound(thread_id)
          // the runs' last writes are queued before the delete, so they cannot bring the thread back
          // runs on instances that cannot be reached now are left as before (their events stay until retention)
          if (engines !== undefined) yield* Effect.ignore(engines.stop({ user_id, thread_id }))
          const deleted = yield* store.deleteThread({ user_id, thread_id }).pipe(Effect.mapError(unavailable))
          // the thread's retained run events go too (resume_run, list_runs, GET /api/runs no longer show them)
          if (log?.eraseThread !== undefined) yield* log.eraseThread(user_id, thread_id).pipe(Effect.mapError(unavailable))
          if (!deleted) return yield* notFound(thread_id)
        })
      )),
    erase: (user_id) =>
      Effect.uninterruptible(withStore((store) =>
        Effect.gen(function*() {
          if (engines !== undefined) yield* Effect.ignore(engines.stop({ user_id }))
          const counts = yield* store.eraseUser(user_id).pipe(Effect.mapError(unavailable))
          const events = log?.eraseUser === undefined ? 0 : yield* log.eraseUser(user_id).pipe(Effect.mapError(unavailable))
          // and what the engine and admission remember of their ended runs and request ids
          if (engines !== undefined) yield* engines.forgetUser(user_id)
          yield* Effect.logInfo("user data erased").pipe(Effect.annotateLogs({ user_id, ...counts, event_logs: events }))
          return { ...counts, events }
        })
      ))
  }
})

/**
 * The WebSocket side: a handler for one connection. Each request runs in the
 * background (a slow database never holds up the connection's other frames);
 * the answer or the `error` frame goes out through `reply`. The fibers end
 * with the connection's scope; a `delete_thread` received is carried out
 * first (`remove` is uninterruptible, and its fiber enters it as it starts).
 */
export const makeHandler = (user_id: string, reply: (message: ServerMessage) => void) =>
  Effect.gen(function*() {
    const api = yield* makeApi
    const background = yield* FiberSet.make()
    const withRequestId = (request_id: string | undefined) => (request_id === undefined ? {} : { request_id })
    const refuse = (request_id: string | undefined) => (e: ThreadRequestError) =>
      Effect.sync(() => reply({ type: "error", code: e.code, message: e.message, ...withRequestId(request_id) }))

    const answer = (message: ListThreads | GetThread | DeleteThread): Effect.Effect<void, never> => {
      switch (message.type) {
        case "list_threads":
          return api.list(user_id, { before: message.before, limit: message.limit }).pipe(
            Effect.flatMap((page) => Effect.sync(() => reply({ type: "threads", ...page, threads: [...page.threads], ...withRequestId(message.request_id) }))),
            Effect.catch(refuse(message.request_id))
          )
        case "get_thread":
          return api.get(user_id, message.thread_id).pipe(
            Effect.flatMap((thread) => Effect.sync(() => reply({ type: "thread", ...thread, ...withRequestId(message.request_id) }))),
            Effect.catch(refuse(message.request_id))
          )
        case "delete_thread":
          return api.remove(user_id, message.thread_id).pipe(
            Effect.flatMap(() => Effect.sync(() => reply({ type: "thread_deleted", thread_id: message.thread_id, ...withRequestId(message.request_id) }))),
            Effect.catch(refuse(message.request_id))
          )
      }
    }
    return (message: ListThreads | GetThread | DeleteThread): Effect.Effect<void> => FiberSet.run(background, answer(message)).pipe(Effect.asVoid)
  })
