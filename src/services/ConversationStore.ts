/**
 * ConversationStore: the history of each conversation thread, for agents that
 * remember (the `assistant`).
 *
 * A conversation is keyed by `(user_id, thread_id)`: thread ids are chosen by
 * clients, so the same `thread_id` of two users names two different
 * conversations, and no user ever reads another's. The contract is
 * storage-neutral: an in-memory layer (`layers/ConversationStoreMemory.ts`)
 * today, durable ones later. A store may forget old messages (bounded memory);
 * it never reorders them.
 *
 * @module
 */
import { Context, Data, type Effect } from "effect"

/** One message of a conversation: what the user asked, or the final answer. */
export interface ConversationMessage {
  readonly role: "user" | "assistant"
  readonly content: string
}

/** Which conversation: one user's thread. */
export interface ConversationKey {
  readonly user_id: string
  readonly thread_id: string
}

/** The store could not be read or written (a durable store's I/O failure). */
export class ConversationStoreError extends Data.TaggedError("ConversationStoreError")<{
  readonly operation: "load" | "append"
  readonly message: string
}> {}

export class ConversationStore extends Context.Service<ConversationStore, {
  /** The messages of `key`, oldest first; empty for a new thread. A snapshot: later appends do not change it. */
  readonly load: (key: ConversationKey) => Effect.Effect<ReadonlyArray<ConversationMessage>, ConversationStoreError>
  /** Appends `messages` (in order) to `key`'s conversation, atomically. */
  readonly append: (
    key: ConversationKey,
    messages: ReadonlyArray<ConversationMessage>
  ) => Effect.Effect<void, ConversationStoreError>
}>()("agentwire/ConversationStore") {}
