/**
 * `ConversationStore` in process memory, bounded.
 *
 * Bounds (both configurable, defaults below):
 * - per thread: the newest `maxMessagesPerThread` messages and at most
 *   `maxCharsPerThread` characters of content are kept; older messages are
 *   dropped first (a single message longer than the character bound is kept
 *   alone, cut to its last `maxCharsPerThread` characters);
 * - in total: at most `maxThreads` threads; adding one more forgets the thread
 *   least recently appended to or loaded.
 *
 * So the memory held is at most about `maxThreads × maxCharsPerThread`
 * characters (default 10 000 × 64 000, i.e. 640 M characters in the worst
 * case; lower `maxThreads` on small machines). Lost on restart.
 *
 * @module
 */
import { Effect, Layer } from "effect"
import { type ConversationMessage, ConversationStore } from "../services/ConversationStore.ts"

/** Bounds of the in-memory store. */
export interface ConversationStoreMemoryOptions {
  /** Messages kept per thread (default 100). */
  readonly maxMessagesPerThread?: number | undefined
  /** Characters of content kept per thread (default 64 000). */
  readonly maxCharsPerThread?: number | undefined
  /** Threads kept in total, least recently used forgotten first (default 10 000). */
  readonly maxThreads?: number | undefined
}

export const DEFAULT_MAX_MESSAGES_PER_THREAD = 100
export const DEFAULT_MAX_CHARS_PER_THREAD = 64_000
export const DEFAULT_MAX_THREADS = 10_000

// user ids and thread ids cannot contain a newline (protocol Id), so this key is unambiguous
const keyOf = (key: { readonly user_id: string; readonly thread_id: string }) => `${key.user_id}\n${key.thread_id}`

/** Builds the store. */
export const make = (options: ConversationStoreMemoryOptions = {}) =>
  Effect.sync(() => {
    const maxMessages = Math.max(1, options.maxMessagesPerThread ?? DEFAULT_MAX_MESSAGES_PER_THREAD)
    const maxChars = Math.max(1, options.maxCharsPerThread ?? DEFAULT_MAX_CHARS_PER_THREAD)
    const maxThreads = Math.max(1, options.maxThreads ?? DEFAULT_MAX_THREADS)
    // Map iteration order is insertion order: re-inserting on use makes the first key the least recently used
    const threads = new Map<string, { messages: Array<ConversationMessage>; chars: number }>()

    const touch = (k: string) => {
      const thread = threads.get(k)
      if (thread !== undefined) {
        threads.delete(k)
        threads.set(k, thread)
      }
      return thread
    }

    return ConversationStore.of({
      load: Effect.fn("ConversationStore.load")((key) =>
        Effect.sync(() => {
          const thread = touch(keyOf(key))
          return thread === undefined ? [] : thread.messages.slice()
        })
      ),
      append: Effect.fn("ConversationStore.append")((key, messages) =>
        Effect.sync(() => {
          if (messages.length === 0) return
          const k = keyOf(key)
          let thread = touch(k)
          if (thread === undefined) {
            thread = { messages: [], chars: 0 }
            threads.set(k, thread)
            while (threads.size > maxThreads) {
              const oldest = threads.keys().next().value as string
              threads.delete(oldest)
            }
          }
          for (const message of messages) {
            const content = message.content.length > maxChars ? message.content.slice(-maxChars) : message.content
            thread.messages.push({ role: message.role, content })
            thread.chars += content.length
          }
          while (thread.messages.length > maxMessages || (thread.chars > maxChars && thread.messages.length > 1)) {
            thread.chars -= thread.messages.shift()!.content.length
          }
        })
      )
    })
  })

/** The in-memory store with the given bounds. */
export const layer = (options: ConversationStoreMemoryOptions = {}): Layer.Layer<ConversationStore> =>
  Layer.effect(ConversationStore, make(options))
