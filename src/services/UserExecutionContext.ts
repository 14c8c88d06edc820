/**
 * UserExecutionContext: who a run belongs to and which run it is.
 *
 * Immutable. Built only through `make`, which validates every id and generates
 * `run_id` and `request_id` when they are absent.
 *
 * @module
 */
import { Data, Effect, Schema } from "effect"
import { Id } from "../protocol/Protocol.ts"

/** The immutable identity of one run. */
export interface UserExecutionContext {
  readonly user_id: string
  readonly thread_id: string
  readonly run_id: string
  readonly request_id: string
}

/** Raised when an id is empty, too long, has characters outside `[A-Za-z0-9._:-]` or is a placeholder. */
export class InvalidContextError extends Data.TaggedError("InvalidContextError")<{
  readonly field: keyof UserExecutionContext
  readonly value: string
  readonly reason: string
}> {
  override get message(): string {
    return `invalid ${this.field} ${JSON.stringify(this.value.slice(0, 140))}: ${this.reason}`
  }
}

/** What `make` accepts: thread, run and request ids are generated when absent. */
export interface UserExecutionContextInput {
  readonly user_id: string
  readonly thread_id?: string | undefined
  readonly run_id?: string | undefined
  readonly request_id?: string | undefined
}

const validateId = Schema.decodeUnknownResult(Id)

const check = (field: keyof UserExecutionContext, value: string): Effect.Effect<string, InvalidContextError> => {
  const result = validateId(value)
  return result._tag === "Success"
    ? Effect.succeed(result.success)
    : Effect.fail(new InvalidContextError({ field, value, reason: result.failure.message.split("\n")[0] ?? "invalid" }))
}

/**
 * Generates an id with a readable prefix and 32 hex digits, e.g. `run_3f2a…`.
 * Run and thread ids (the keys of history rows) start with the time in ms
 * (12 hex digits), then 20 random ones (74 random bits): ids made later sort
 * later, so the database's indexes on them grow at one end (a run's history
 * write dirties a shared page, not one random page per index: fewer pages per
 * commit). Other ids are 32 random hex digits.
 */
export const generateId = (prefix: "run" | "req" | "thread" | "conn" | "tool" | "epoch"): string => {
  const random = crypto.randomUUID().replaceAll("-", "")
  return prefix === "run" || prefix === "thread"
    ? `${prefix}_${Date.now().toString(16).padStart(12, "0").slice(-12)}${random.slice(0, 20)}`
    : `${prefix}_${random}`
}

/** A given id is checked; a generated one (`generateId`: a prefix, `_` and 32 hex digits) is valid as made. */
const given = (field: keyof UserExecutionContext, value: string | undefined, prefix: "thread" | "run" | "req") =>
  value === undefined ? Effect.succeed(generateId(prefix)) : check(field, value)

/** Validates the input and returns a frozen context. */
export const make = (input: UserExecutionContextInput): Effect.Effect<UserExecutionContext, InvalidContextError> =>
  Effect.gen(function*() {
    const user_id = yield* check("user_id", input.user_id)
    const thread_id = yield* given("thread_id", input.thread_id, "thread")
    const run_id = yield* given("run_id", input.run_id, "run")
    const request_id = yield* given("request_id", input.request_id, "req")
    return Object.freeze({ user_id, thread_id, run_id, request_id })
  })
