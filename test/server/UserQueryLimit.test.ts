/**
 * The per-user bound on HTTP queries in flight (run queries, threads): past
 * it a query is not run and the route answers 429 RATE_LIMITED at once; a
 * query that ends, however it ends, frees its place; other users are not
 * affected.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Option } from "effect"
import * as UserQueryLimit from "../../src/server/UserQueryLimit.ts"

describe("UserQueryLimit", () => {
  it.effect("at most MAX_QUERIES_PER_USER of one user in flight; the next is refused without running; an ended one (success, failure, interruption) frees its place; other users go on", () =>
    Effect.gen(function*() {
      const guard = UserQueryLimit.make()
      const max = UserQueryLimit.MAX_QUERIES_PER_USER
      const gates = yield* Effect.forEach(Array.from({ length: max }), () => Deferred.make<string, string>())
      const held = yield* Effect.forEach(gates, (gate) => Effect.forkChild(guard("alice", Deferred.await(gate))))
      yield* Effect.yieldNow
      let ran = false
      expect(yield* guard("alice", Effect.sync(() => (ran = true)))).toEqual(Option.none())
      expect(ran).toBe(false)
      // another user is not affected
      expect(yield* guard("bob", Effect.succeed("ok"))).toEqual(Option.some("ok"))
      // a success, a failure and an interruption each free one place
      yield* Deferred.succeed(gates[0]!, "done")
      expect(yield* Fiber.join(held[0]!)).toEqual(Option.some("done"))
      yield* Deferred.fail(gates[1]!, "boom")
      expect(yield* Effect.flip(Fiber.join(held[1]!))).toBe("boom")
      yield* Fiber.interrupt(held[2]!)
      expect(yield* guard("alice", Effect.succeed(1))).toEqual(Option.some(1))
      const more = yield* Effect.forEach([1, 2, 3], (n) => Effect.forkChild(guard("alice", Effect.andThen(Deferred.await(gates[3]!), Effect.succeed(n)))))
      yield* Effect.yieldNow
      expect(yield* guard("alice", Effect.succeed("over"))).toEqual(Option.none())
      for (const gate of gates) yield* Deferred.succeed(gate, "end")
      expect(yield* Effect.forEach(more, Fiber.join)).toEqual([Option.some(1), Option.some(2), Option.some(3)])
      expect(yield* guard("alice", Effect.succeed("free"))).toEqual(Option.some("free"))
      const response = UserQueryLimit.tooMany()
      expect(response.status).toBe(429)
      expect(response.headers["retry-after"]).toBe("1")
    }))
})
