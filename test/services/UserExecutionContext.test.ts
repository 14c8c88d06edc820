import { describe, expect, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { Id } from "../../src/protocol/Protocol.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"

describe("UserExecutionContext.make", () => {
  it.effect("keeps given ids, generates run_id, request_id and thread_id when absent, and freezes", () =>
    Effect.gen(function*() {
      const given = yield* UserExecutionContext.make({ user_id: "alice", thread_id: "t-1", run_id: "r:1", request_id: "q.1" })
      expect(given).toEqual({ user_id: "alice", thread_id: "t-1", run_id: "r:1", request_id: "q.1" })
      expect(Object.isFrozen(given)).toBe(true)

      const a = yield* UserExecutionContext.make({ user_id: "alice" })
      const b = yield* UserExecutionContext.make({ user_id: "alice" })
      expect(a.run_id).toMatch(/^run_[0-9a-f]{32}$/)
      expect(a.request_id).toMatch(/^req_[0-9a-f]{32}$/)
      expect(a.thread_id).toMatch(/^thread_[0-9a-f]{32}$/)
      expect(a.run_id).not.toBe(b.run_id)
    }))

  it("run and thread ids made later sort later (history indexes grow at one end); other ids stay random", () => {
    const ids = (prefix: "run" | "thread") => {
      const out: Array<string> = []
      // ids from different milliseconds: the time prefix orders them. An id is kept when its own
      // time prefix is later than the last kept one's (CI flake: a pause of a few ms before the first
      // id made the old wall-clock check keep two ids of the same millisecond, ordered at random)
      const millis = (id: string) => Number.parseInt(id.slice(prefix.length + 1, prefix.length + 13), 16)
      while (out.length < 3) {
        const before = Date.now()
        const id = UserExecutionContext.generateId(prefix)
        const after = Date.now()
        // the prefix is the time the id was made (so keeping later prefixes is keeping later ids)
        if (millis(id) < before || millis(id) > after) expect.fail(`${id}: time prefix ${millis(id)} is not within [${before}, ${after}]`)
        if (out.length === 0 || millis(id) > millis(out.at(-1)!)) out.push(id)
      }
      return out
    }
    for (const prefix of ["run", "thread"] as const) {
      const made = ids(prefix)
      expect([...made].sort()).toEqual(made)
      for (const id of made) expect(id).toMatch(new RegExp(`^${prefix}_[0-9a-f]{32}$`))
      expect(Number.parseInt(made[0]!.slice(prefix.length + 1, prefix.length + 13), 16)).toBeGreaterThan(Date.now() - 60_000)
    }
    expect(UserExecutionContext.generateId("conn")).toMatch(/^conn_[0-9a-f]{32}$/)
  })

  const bad: ReadonlyArray<[string, Record<string, string>, string]> = [
    ["empty user", { user_id: "" }, "user_id"],
    ["placeholder user", { user_id: "none" }, "user_id"],
    ["placeholder in any case", { user_id: "alice", thread_id: "UNDEFINED" }, "thread_id"],
    ["registry", { user_id: "registry" }, "user_id"],
    ["placeholder run", { user_id: "alice", run_id: "placeholder" }, "run_id"],
    ["null request", { user_id: "alice", request_id: "null" }, "request_id"],
    ["space", { user_id: "al ice" }, "user_id"],
    ["slash", { user_id: "alice", thread_id: "a/b" }, "thread_id"],
    ["too long", { user_id: "x".repeat(129) }, "user_id"]
  ]
  for (const [label, input, field] of bad) {
    it.effect(`rejects ${label} with a typed error naming ${field}`, () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(UserExecutionContext.make(input as unknown as UserExecutionContext.UserExecutionContextInput))
        expect(error._tag).toBe("InvalidContextError")
        expect(error.field).toBe(field)
        expect(error.message).toContain(field)
      }))
  }

  it("a generated id is a valid Id (make does not check the ids it generates)", () => {
    const valid = Schema.is(Id)
    for (const prefix of ["thread", "run", "req"] as const) {
      for (let i = 0; i < 100; i++) expect(valid(UserExecutionContext.generateId(prefix))).toBe(true)
    }
  })

  it.effect("accepts exactly 128 characters of the allowed alphabet", () =>
    Effect.gen(function*() {
      const id = "aZ09._:-".repeat(16)
      expect(id.length).toBe(128)
      expect((yield* UserExecutionContext.make({ user_id: id })).user_id).toBe(id)
    }))
})
