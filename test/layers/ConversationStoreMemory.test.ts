import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import * as ConversationStoreMemory from "../../src/layers/ConversationStoreMemory.ts"
import type { ConversationMessage } from "../../src/services/ConversationStore.ts"

const user = (content: string): ConversationMessage => ({ role: "user", content })
const alice = (thread_id: string) => ({ user_id: "alice", thread_id })

describe("ConversationStoreMemory", () => {
  it.effect("keys by (user_id, thread_id): the same thread id of two users is two conversations", () =>
    Effect.gen(function*() {
      const store = yield* ConversationStoreMemory.make()
      yield* store.append(alice("t"), [user("a1")])
      yield* store.append({ user_id: "bob", thread_id: "t" }, [user("b1")])
      expect(yield* store.load(alice("t"))).toEqual([user("a1")])
      expect(yield* store.load({ user_id: "bob", thread_id: "t" })).toEqual([user("b1")])
      expect(yield* store.load(alice("other"))).toEqual([])
    }))

  it.effect("load is a snapshot: later appends do not change it", () =>
    Effect.gen(function*() {
      const store = yield* ConversationStoreMemory.make()
      yield* store.append(alice("t"), [user("1")])
      const snapshot = yield* store.load(alice("t"))
      yield* store.append(alice("t"), [user("2")])
      expect(snapshot).toEqual([user("1")])
      expect(yield* store.load(alice("t"))).toEqual([user("1"), user("2")])
    }))

  it.effect("per thread: keeps the newest maxMessagesPerThread messages", () =>
    Effect.gen(function*() {
      const store = yield* ConversationStoreMemory.make({ maxMessagesPerThread: 3 })
      for (const n of [1, 2, 3, 4, 5]) yield* store.append(alice("t"), [user(String(n))])
      expect(yield* store.load(alice("t"))).toEqual([user("3"), user("4"), user("5")])
    }))

  it.effect("per thread: keeps at most maxCharsPerThread characters, dropping the oldest; one huge message is cut", () =>
    Effect.gen(function*() {
      const store = yield* ConversationStoreMemory.make({ maxCharsPerThread: 10 })
      yield* store.append(alice("t"), [user("aaaa"), user("bbbb"), user("cccc")])
      expect(yield* store.load(alice("t"))).toEqual([user("bbbb"), user("cccc")])
      yield* store.append(alice("t"), [user("0123456789XYZ")])
      expect(yield* store.load(alice("t"))).toEqual([user("3456789XYZ")])
    }))

  it.effect("in total: at most maxThreads threads, the least recently used forgotten first", () =>
    Effect.gen(function*() {
      const store = yield* ConversationStoreMemory.make({ maxThreads: 2 })
      yield* store.append(alice("t1"), [user("1")])
      yield* store.append(alice("t2"), [user("2")])
      yield* store.load(alice("t1")) // t1 is now the most recently used
      yield* store.append(alice("t3"), [user("3")])
      expect(yield* store.load(alice("t2"))).toEqual([])
      expect(yield* store.load(alice("t1"))).toEqual([user("1")])
      expect(yield* store.load(alice("t3"))).toEqual([user("3")])
    }))

  it.effect("getThread is a use too: the thread read last is not the one forgotten", () =>
    Effect.gen(function*() {
      const store = yield* ConversationStoreMemory.make({ maxThreads: 2 })
      yield* store.append(alice("t1"), [user("1")])
      yield* store.append(alice("t2"), [user("2")])
      expect(Option.isSome(yield* store.getThread(alice("t1")))).toBe(true) // t1 is now the most recently used
      yield* store.append(alice("t3"), [user("3")])
      expect(Option.isNone(yield* store.getThread(alice("t2")))).toBe(true)
      expect(yield* store.load(alice("t1"))).toEqual([user("1")])
    }))
})
