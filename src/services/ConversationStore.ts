/**
 * ConversationStore: the durable history of each conversation thread: its
 * messages, and a summary of every run on it.
 *
 * A conversation is keyed by `(user_id, thread_id)`: thread ids are chosen by
 * clients, so no user ever reads another's thread (a foreign thread is
 * indistinguishable from an unknown one). The engine refuses a run on a thread
 * id another user already has (`threadAccess` answers `foreign`), so in
 * practice a thread id names one user's thread.
 *
 * What is stored, per thread: `title` (the start of its first request),
 * `created_at`/`updated_at`; its messages (role, content, the `run_id` that
 * produced it, time), oldest first; a `RunRecord` per run (agent, status,
 * started/ended, final response or error code). Not the run's events (those
 * live briefly in the `RunLog`).
 *
 * Who writes: the engine (`layers/ExecutionEngineFactory.ts`) records each root
 * run when it starts (`recordRun` with status `running` and the request as a
 * message, creating the thread) and when it ends (`recordRun` with its
 * outcome, plus the answer when it completed). Agents read (`load`, leaving
 * out their own run's request). A run a crash left `running` is marked
 * `failed` with error code `INSTANCE_LOST` when the server starts again
 * (SQLite: `ConversationStoreSql.markLostRuns`).
 *
 * Times are milliseconds since the Unix epoch. The contract is
 * storage-neutral; implementations: in memory (`layers/ConversationStoreMemory.ts`,
 * bounded, lost on restart), SQL over `effect/sql` (`layers/ConversationStoreSql.ts`:
 * SQLite or PostgreSQL), and the write-behind wrapper that keeps durable writes
 * off the hot path (`layers/ConversationStoreBuffered.ts`).
 *
 * @module
 */
import { Context, Data, type Effect, type Option } from "effect"

/** One message of a conversation: what the user asked, or the final answer. */
export interface ConversationMessage {
  readonly role: "user" | "assistant"
  readonly content: string
}

/** A message as stored: with the run that produced it and when. */
export interface StoredMessage extends ConversationMessage {
  /** The run whose request or answer this is; absent for messages appended outside a run. */
  readonly run_id?: string | undefined
  /** Milliseconds since the epoch. */
  readonly created_at: number
  /** `true` when `content` is only the start of the stored message (`getThread` answers are bounded). */
  readonly truncated?: boolean | undefined
}

/** Which conversation: one user's thread. */
export interface ConversationKey {
  readonly user_id: string
  readonly thread_id: string
}

/** A run's status: `running` while active, else its root `agent_completed.status`. */
export type RunRecordStatus = "running" | "completed" | "failed" | "cancelled" | "timed_out"

/** The summary of one run on a thread. */
export interface RunRecord {
  readonly run_id: string
  readonly user_id: string
  readonly thread_id: string
  readonly agent_name: string
  readonly status: RunRecordStatus
  /** Milliseconds since the epoch. */
  readonly started_at: number
  /** Milliseconds since the epoch; absent while running. */
  readonly ended_at?: number | undefined
  /** The answer of a completed run (or the failure text of another), when it ended. */
  readonly final_response?: string | undefined
  /** The root error's code, for a failed or timed-out run. */
  readonly error_code?: string | undefined
}

/** One entry of a thread list. */
export interface ThreadSummary {
  readonly thread_id: string
  readonly title: string
  readonly created_at: number
  readonly updated_at: number
  /** The status of the thread's newest run; absent when it has none. */
  readonly last_status?: RunRecordStatus | undefined
}

/** A whole thread: its messages (oldest first) and runs (oldest first). */
export interface ThreadDetail extends ThreadSummary {
  readonly messages: ReadonlyArray<StoredMessage>
  readonly runs: ReadonlyArray<RunRecord>
  /** `true` when older messages or runs were left out or a text was cut (see `boundThread`). */
  readonly truncated?: boolean | undefined
}

/** UTF-8 bytes of message contents and final responses one thread answer holds at most (1 MiB): 3/4 for messages, 1/4 for runs. */
export const THREAD_MAX_BYTES = 1_048_576

/** Characters of one message's content a thread answer holds at most (the start is kept). */
export const THREAD_MESSAGE_MAX_CHARS = 65_536

/** Characters of one run's final response a thread answer holds at most (the whole answer is its assistant message). */
export const THREAD_RESPONSE_MAX_CHARS = 4_096

/** `text` cut to at most `max` UTF-16 units, never inside a surrogate pair. */
export const cutText = (text: string, max: number): string => {
  if (text.length <= max) return text
  const end = /[\uD800-\uDBFF]/.test(text[max - 1]!) ? max - 1 : max
  return text.slice(0, end)
}

/** What a message's or run's other fields take on the wire, about, bytes. */
const MESSAGE_OVERHEAD_BYTES = 100
const RUN_OVERHEAD_BYTES = 200

const utf8Bytes = (text: string): number => Buffer.byteLength(text, "utf8")

/**
 * `thread` bounded for an answer: each message content cut to
 * `THREAD_MESSAGE_MAX_CHARS` (marked `truncated`), each final response to
 * `THREAD_RESPONSE_MAX_CHARS`; then the newest messages whose contents fit in
 * 3/4 of `maxBytes` (UTF-8) and the newest runs whose final responses fit in
 * the rest (a run or message is kept whole or left out; the newest is always
 * kept). `truncated: true` when anything was cut or left out.
 */
export const boundThread = (thread: ThreadDetail, maxBytes = THREAD_MAX_BYTES): ThreadDetail => {
  let truncated = thread.truncated === true
  const messages: Array<StoredMessage> = []
  let budget = Math.floor(maxBytes * 3 / 4)
  for (let i = thread.messages.length - 1; i >= 0; i--) {
    const m = thread.messages[i]!
    const content = cutText(m.content, THREAD_MESSAGE_MAX_CHARS)
    const bytes = MESSAGE_OVERHEAD_BYTES + utf8Bytes(content)
    if (messages.length > 0 && bytes > budget) {
      truncated = true
      break
    }
    budget -= bytes
    const cut = content.length < m.content.length
    if (cut) truncated = true
    messages.push(cut ? { ...m, content, truncated: true } : m)
  }
  const runs: Array<RunRecord> = []
  budget = maxBytes - Math.floor(maxBytes * 3 / 4)
  for (let i = thread.runs.length - 1; i >= 0; i--) {
    const r = thread.runs[i]!
    const response = r.final_response === undefined ? undefined : cutText(r.final_response, THREAD_RESPONSE_MAX_CHARS)
    const bytes = RUN_OVERHEAD_BYTES + (response === undefined ? 0 : utf8Bytes(response))
    if (runs.length > 0 && bytes > budget) {
      truncated = true
      break
    }
    budget -= bytes
    if (response !== r.final_response) truncated = true
    runs.push(response === r.final_response ? r : { ...r, final_response: response })
  }
  return { ...thread, messages: messages.reverse(), runs: runs.reverse(), ...(truncated ? { truncated: true } : {}) }
}

/**
 * Where a thread list page starts: threads strictly older than this
 * `(updated_at, thread_id)` in list order (newest first).
 */
export interface ThreadCursor {
  readonly updated_at: number
  readonly thread_id: string
}

/** A page of threads, newest `updated_at` first; `next` is where the next page starts, absent on the last page. */
export interface ThreadPage {
  readonly threads: ReadonlyArray<ThreadSummary>
  readonly next?: ThreadCursor | undefined
}

/** What `eraseUser` removed. */
export interface ErasedCounts {
  readonly threads: number
  readonly messages: number
  readonly runs: number
}

/** Whether a thread id is the user's, unknown, or already another user's. */
export type ThreadAccess = "own" | "none" | "foreign"

/** The store's condition, for `/ready`. */
export interface StoreHealth {
  /** `up`; `degraded` when writes are failing or waiting (history is behind, streaming is not affected). */
  readonly status: "up" | "degraded"
  /** Which storage: `memory`, `sqlite`, `postgres`. */
  readonly backend: string
  /** Writes accepted but not yet stored. */
  readonly pending_writes: number
  /** Writes given up on since start (queue full during a long outage, or still pending at shutdown). */
  readonly dropped_writes: number
  /**
   * Writes set aside since start because the database refused them for good
   * (a constraint or data error: retrying cannot help); each is logged at error
   * level and never blocks the writes behind it. Absent means 0.
   */
  readonly failed_writes?: number | undefined
  /** The last storage failure, if the last attempt failed. */
  readonly last_error?: string | undefined
}

/** Most threads one `listThreads` page holds. */
export const MAX_THREAD_PAGE = 100

/** Characters of the first request kept as a thread's title. */
export const TITLE_MAX_CHARS = 120

/**
 * The title of a thread whose first request is `request`: its first line (ended
 * by LF, CR LF or CR), trimmed, cut to `TITLE_MAX_CHARS` UTF-16 units with `…`
 * (never inside a surrogate pair).
 */
export const titleOf = (request: string): string => {
  const line = (request.trim().split(/\r\n|\r|\n/, 1)[0] ?? "").trim()
  return line.length > TITLE_MAX_CHARS ? `${cutText(line, TITLE_MAX_CHARS - 1)}…` : line
}

/** The store could not be read or written (a durable store's I/O failure). */
export class ConversationStoreError extends Data.TaggedError("ConversationStoreError")<{
  readonly operation: "load" | "append" | "record" | "access" | "list" | "get" | "delete" | "erase" | "markRunLost"
  readonly message: string
  /**
   * True when the database refused this operation for good (a constraint or
   * data error): retrying it as given cannot succeed. Absent or false: it may
   * be transient (connection lost, database busy) and a retry may succeed.
   */
  readonly permanent?: boolean | undefined
}> {}

/**
 * `text` as every backend can hold it: NUL (U+0000, which PostgreSQL refuses
 * in `TEXT`) and lone UTF-16 surrogates (not encodable as UTF-8) become
 * U+FFFD. Stores apply it to every text they keep and every key they look up,
 * so all backends answer alike.
 */
export const storableText = (text: string): string => text.replace(UNSTORABLE, "\uFFFD")

/** NUL, a high surrogate not followed by a low one, a low surrogate not preceded by a high one. */
const UNSTORABLE = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g

export class ConversationStore extends Context.Service<ConversationStore, {
  /**
   * The messages of `key` for a model, oldest first (the newest ones, bounded by the store); empty for a new thread. A snapshot.
   * `exceptRun`: leave out the messages of that run (a run's own request is stored when it starts).
   */
  readonly load: (
    key: ConversationKey,
    options?: { readonly exceptRun?: string | undefined }
  ) => Effect.Effect<ReadonlyArray<ConversationMessage>, ConversationStoreError>
  /** Appends `messages` (in order) to `key`'s conversation, atomically, creating the thread if needed. */
  readonly append: (
    key: ConversationKey,
    messages: ReadonlyArray<ConversationMessage>,
    /** `at`: when, ms since the epoch (default now). */
    options?: { readonly run_id?: string | undefined; readonly at?: number | undefined }
  ) => Effect.Effect<void, ConversationStoreError>
  /**
   * Records (inserts or replaces) a run's summary and appends `messages` (tagged
   * with its `run_id`), atomically; creates the thread (titled from `title`) when
   * it does not exist, and moves its `updated_at` to now.
   */
  readonly recordRun: (
    run: RunRecord,
    options?: {
      readonly title?: string | undefined
      readonly messages?: ReadonlyArray<ConversationMessage> | undefined
      /** When this was recorded, ms since the epoch (default now): the thread's `updated_at` and the messages' `created_at`. */
      readonly at?: number | undefined
    }
  ) => Effect.Effect<void, ConversationStoreError>
  /**
   * Marks the run `failed` with error code `INSTANCE_LOST` (ended at `at`, ms
   * since the epoch) if it is recorded and still `running`; an unknown or
   * ended run is left alone and no thread is created. Used when another
   * instance closes the runs of a lost one (several instances sharing a store).
   * Optional: a store without it leaves such runs `running`.
   */
  readonly markRunLost?: ((key: ConversationKey & { readonly run_id: string }, at: number) => Effect.Effect<void, ConversationStoreError>) | undefined
  /** Whether `thread_id` is `user_id`'s thread, unknown, or another user's. */
  readonly threadAccess: (key: ConversationKey) => Effect.Effect<ThreadAccess, ConversationStoreError>
  /** The user's threads, newest `updated_at` first, `limit` (1 to `MAX_THREAD_PAGE`) per page, starting after `before`. */
  readonly listThreads: (
    user_id: string,
    options?: { readonly before?: ThreadCursor | undefined; readonly limit?: number | undefined }
  ) => Effect.Effect<ThreadPage, ConversationStoreError>
  /** The thread, bounded by `boundThread` (its newest messages and runs, about 1 MiB; `truncated` says when something was left out or cut), or none when the user has no such thread. */
  readonly getThread: (key: ConversationKey) => Effect.Effect<Option.Option<ThreadDetail>, ConversationStoreError>
  /** Deletes the thread with its messages and runs; false when the user had no such thread. */
  readonly deleteThread: (key: ConversationKey) => Effect.Effect<boolean, ConversationStoreError>
  /** Deletes every thread, message and run of the user (data-protection requests); other users are untouched. */
  readonly eraseUser: (user_id: string) => Effect.Effect<ErasedCounts, ConversationStoreError>
  /** The store's condition now. */
  readonly health: Effect.Effect<StoreHealth>
}>()("agentwire/ConversationStore") {}
