/**
 * Engine overhead, in process: how many `createForUser` + release cycles per
 * second `ExecutionEngineFactory` does, on `AgentRuntime.layer` with the
 * built-in agents. Two loops:
 * - `createForUser`: one context made up front, `Effect.scoped(createForUser(ctx))`;
 * - `make + createForUser`: a fresh `UserExecutionContext.make` (id
 *   validation, generated ids) each time, as a real run does.
 *
 * Each loop runs in batches until its time budget is spent (bounded by a
 * batch count too), after a warm-up; the reply is ops/s.
 *
 * argv: <budget ms per loop>
 *
 * @module
 */
import { Effect, Layer } from "effect"
import * as BuiltinAgents from "../src/agents/BuiltinAgents.ts"
import * as AgentRuntime from "../src/layers/AgentRuntime.ts"
import { ExecutionEngineFactory } from "../src/services/ExecutionEngineFactory.ts"
import * as UserExecutionContext from "../src/services/UserExecutionContext.ts"

export interface EngineResult {
  readonly createForUserPerSecond: number
  readonly makeAndCreatePerSecond: number
  readonly iterations: { readonly createForUser: number; readonly makeAndCreate: number }
}

const budgetMs = Number(process.argv[2] ?? "1000")
const BATCH = 1000
const MAX_BATCHES = 100_000

const program = Effect.gen(function*() {
  const factory = yield* ExecutionEngineFactory
  const ctx = yield* UserExecutionContext.make({ user_id: "u1" })

  const plain = Effect.scoped(factory.createForUser(ctx))
  const withMake = Effect.scoped(Effect.flatMap(UserExecutionContext.make({ user_id: "u1" }), factory.createForUser))

  const measure = (cycle: Effect.Effect<unknown, unknown>, ms: number) =>
    Effect.gen(function*() {
      const batch = Effect.gen(function*() {
        for (let i = 0; i < BATCH; i++) yield* cycle
      })
      let n = 0
      const t0 = performance.now()
      for (let b = 0; b < MAX_BATCHES && performance.now() - t0 < ms; b++) {
        yield* batch
        n += BATCH
      }
      return { n, perSecond: n / ((performance.now() - t0) / 1000) }
    })

  // warm-up, then measure
  yield* measure(plain, budgetMs / 4)
  yield* measure(withMake, budgetMs / 4)
  const a = yield* measure(plain, budgetMs)
  const b = yield* measure(withMake, budgetMs)
  const result: EngineResult = {
    createForUserPerSecond: a.perSecond,
    makeAndCreatePerSecond: b.perSecond,
    iterations: { createForUser: a.n, makeAndCreate: b.n }
  }
  return result
})

const layer = AgentRuntime.layer.pipe(Layer.provide(BuiltinAgents.layer))

Effect.runPromise(Effect.provide(program, layer)).then(
  (result) => {
    process.send?.({ id: 0, ...result })
    process.exit(0)
  },
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)
