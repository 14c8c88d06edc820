/**
 * `ConversationStore` in process memory, bounded.
 *
 * Bounds (configurable, defaults below):
 * - per thread: the newest `maxMessagesPerThread` messages and at most
 *   `maxCharsPerThread` characters of content are kept; older messages are
 *   dropped first (a single message longer than the character bound is kept
 *   alone, cut to its last `maxCharsPerThread` characters); the newest
 *   `maxMessagesPerThread` run summaries are kept;
 * - in total: at most `maxThreads` threads; adding one more forgets the thread
 *   least recently written or read.
 *
 * So the memory held is at most about `maxThreads × maxCharsPerThread`
 * characters (default 10 000 × 64 000, i.e. 640 M characters in the worst
 * case; lower `maxThreads` on small machines). Lost on restart: for tests and
 * embedders; the server keeps history in SQLite or PostgreSQL (`layers/History.ts`).
 *
 * @module
 */
import { Effect, Layer, Option } from "effect"
import {
  ConversationStore,
  type ConversationMessage,
  type ConversationKey,
  type ErasedCounts,
  MAX_THREAD_PAGE,
  type RunRecord,
  type StoredMessage,
  type ThreadSummary,
  boundThread,
  storableText,
  titleOf
} from "../services/ConversationStore.ts"

/** Bounds of the in-memory store. */
export interface ConversationStoreMemoryOptions {
  /** Messages (and run summaries) kept per thread (default 100). */
  readonly maxMessagesPerThread?: number | undefined
  /** Characters of content kept per thread (default 64 000). */
  readonly maxCharsPerThread?: number | undefined
  /** Threads kept in total, least recently used forgotten first (default 10 000). */
  readonly maxThreads?: number | undefined
  /** The clock, ms since the epoch (default `Date.now`); for tests. */
  readonly now?: (() => number) | undefined
}

export const DEFAULT_MAX_MESSAGES_PER_THREAD = 100
export const DEFAULT_MAX_CHARS_PER_THREAD = 64_000
export const DEFAULT_MAX_THREADS = 10_000

// user ids and thread ids cannot contain a newline (protocol Id), so this key is unambiguous
const keyOf = (key: { readonly user_id: string; readonly thread_id: string }) => `${key.user_id}\n${key.thread_id}`

interface Thread {
  readonly user_id: string
  readonly thread_id: string
  title: string
  readonly created_at: number
  updated_at: number
  messages: Array<StoredMessage>
  chars: number
  runs: Array<RunRecord>
}

/** List order: newest `updated_at` first, then `thread_id` descending. */
const newerFirst = (a: ThreadSummary, b: ThreadSummary) =>
  b.updated_at - a.updated_at || (a.thread_id < b.thread_id ? 1 : a.thread_id > b.thread_id ? -1 : 0)

const summaryOf = (thread: Thread): ThreadSummary => {
  const last = thread.runs.at(-1)
  return {
    thread_id: thread.thread_id,
    title: thread.title,
    created_at: thread.created_at,
    updated_at: thread.updated_at,
    ...(last === undefined ? {} : { last_status: last.status })
  }
}

/** Builds the store. */
export const make = (options: ConversationStoreMemoryOptions = {}) =>
  Effect.sync(() => {
    const maxMessages = Math.max(1, options.maxMessagesPerThread ?? DEFAULT_MAX_MESSAGES_PER_THREAD)
    const maxChars = Math.max(1, options.maxCharsPerThread ?? DEFAULT_MAX_CHARS_PER_THREAD)
    const maxThreads = Math.max(1, options.maxThreads ?? DEFAULT_MAX_THREADS)
    const now = options.now ?? Date.now
    // Map iteration order is insertion order: re-inserting on use makes the first key the least recently used
    const threads = new Map<string, Thread>()
    // thread_id -> the users that have a thread of that id
    const owners = new Map<string, Set<string>>()

    const touch = (k: string) => {
      const thread = threads.get(k)
      if (thread !== undefined) {
        threads.delete(k)
        threads.set(k, thread)
      }
      return thread
    }

    const forget = (k: string) => {
      const thread = threads.get(k)
      if (thread === undefined) return undefined
      threads.delete(k)
      const users = owners.get(thread.thread_id)
      users?.delete(thread.user_id)
      if (users?.size === 0) owners.delete(thread.thread_id)
      return thread
    }

    const open = (key: { readonly user_id: string; readonly thread_id: string }, title: string, at: number): Thread => {
      const k = keyOf(key)
      let thread = touch(k)
      if (thread === undefined) {
        thread = { user_id: key.user_id, thread_id: key.thread_id, title: storableText(title), created_at: at, updated_at: at, messages: [], chars: 0, runs: [] }
        threads.set(k, thread)
        const users = owners.get(key.thread_id) ?? new Set<string>()
        users.add(key.user_id)
        owners.set(key.thread_id, users)
        while (threads.size > maxThreads) forget(threads.keys().next().value as string)
      }
      thread.updated_at = Math.max(thread.updated_at, at)
      return thread
    }

    const push = (thread: Thread, messages: ReadonlyArray<ConversationMessage>, run_id: string | undefined, at: number) => {
      for (const message of messages) {
        const content = storableText(message.content.length > maxChars ? message.content.slice(-maxChars) : message.content)
        thread.messages.push({ role: message.role, content, created_at: at, ...(run_id === undefined ? {} : { run_id }) })
        thread.chars += content.length
      }
      while (thread.messages.length > maxMessages || (thread.chars > maxChars && thread.messages.length > 1)) {
        thread.chars -= thread.messages.shift()!.content.length
      }
    }

    return ConversationStore.of({
      load: Effect.fn("ConversationStore.load")((key, opts) =>
        Effect.sync(() => {
          const thread = touch(keyOf(key))
          const except = opts?.exceptRun
          return thread === undefined
            ? []
            : thread.messages.filter((m) => except === undefined || m.run_id !== except).map(({ content, role }) => ({ role, content }))
        })
      ),
      append: Effect.fn("ConversationStore.append")((key, messages, opts) =>
        Effect.sync(() => {
          if (messages.length === 0) return
          const at = opts?.at ?? now()
          push(open(key, titleOf(messages[0]!.content), at), messages, opts?.run_id, at)
        })
      ),
      markRunLost: Effect.fn("ConversationStore.markRunLost")((key: ConversationKey & { readonly run_id: string }, at: number) =>
        Effect.sync(() => {
          const thread = touch(keyOf(key))
          const i = thread?.runs.findIndex((r) => r.run_id === key.run_id) ?? -1
          if (thread === undefined || i < 0 || thread.runs[i]!.status !== "running") return
          thread.runs[i] = { ...thread.runs[i]!, status: "failed", ended_at: at, error_code: "INSTANCE_LOST", final_response: "the server stopped before the run ended" }
        })
      ),
      recordRun: Effect.fn("ConversationStore.recordRun")((run, opts) =>
        Effect.sync(() => {
          const at = opts?.at ?? now()
          const thread = open(run, opts?.title ?? "", at)
          run = {
            ...run,
            agent_name: storableText(run.agent_name),
            ...(run.final_response === undefined ? {} : { final_response: storableText(run.final_response) }),
            ...(run.error_code === undefined ? {} : { error_code: storableText(run.error_code) })
          }
          const i = thread.runs.findIndex((r) => r.run_id === run.run_id)
          if (i >= 0) thread.runs[i] = run
          else {
            thread.runs.push(run)
            if (thread.runs.length > maxMessages) thread.runs.shift()
          }
          if (opts?.messages !== undefined && opts.messages.length > 0) push(thread, opts.messages, run.run_id, at)
        })
      ),
      threadAccess: (key) =>
        Effect.sync(() => {
          const users = owners.get(key.thread_id)
          return users === undefined || users.size === 0 ? "none" : users.has(key.user_id) ? "own" : "foreign"
        }),
      listThreads: Effect.fn("ConversationStore.listThreads")((user_id, opts) =>
        Effect.sync(() => {
          const limit = Math.min(MAX_THREAD_PAGE, Math.max(1, opts?.limit ?? MAX_THREAD_PAGE))
          const before = opts?.before
          const mine: Array<ThreadSummary> = []
          for (const thread of threads.values()) {
            if (thread.user_id !== user_id) continue
            const s = summaryOf(thread)
            if (before !== undefined && newerFirst(s, { ...s, updated_at: before.updated_at, thread_id: before.thread_id }) <= 0) continue
            mine.push(s)
          }
          mine.sort(newerFirst)
          const page = mine.slice(0, limit)
          const last = page.at(-1)
          return mine.length > limit && last !== undefined
            ? { threads: page, next: { updated_at: last.updated_at, thread_id: last.thread_id } }
            : { threads: page }
        })
      ),
      getThread: Effect.fn("ConversationStore.getThread")((key) =>
        Effect.sync(() => {
          // a read: the thread becomes the most recently used
          const thread = touch(keyOf(key))
          if (thread === undefined) return Option.none()
          return Option.some(boundThread({ ...summaryOf(thread), messages: thread.messages, runs: thread.runs }))
        })
      ),
      deleteThread: Effect.fn("ConversationStore.deleteThread")((key) => Effect.sync(() => forget(keyOf(key)) !== undefined)),
      eraseUser: Effect.fn("ConversationStore.eraseUser")((user_id) =>
        Effect.sync((): ErasedCounts => {
          let counts = { threads: 0, messages: 0, runs: 0 }
          for (const [k, thread] of Array.from(threads)) {
            if (thread.user_id !== user_id) continue
            forget(k)
            counts = { threads: counts.threads + 1, messages: counts.messages + thread.messages.length, runs: counts.runs + thread.runs.length }
          }
          return counts
        })
      ),
      health: Effect.sync(() => ({ status: "up", backend: "memory", pending_writes: 0, dropped_writes: 0, failed_writes: 0 }))
    })
  })

/** The in-memory store with the given bounds. */
export const layer = (options: ConversationStoreMemoryOptions = {}): Layer.Layer<ConversationStore> =>
  Layer.effect(ConversationStore, make(options))
