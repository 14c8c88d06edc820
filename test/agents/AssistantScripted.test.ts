/**
 * The embedding use: an `Assistant.make` agent with the embedder's own tools
 * (Schema-typed, with their own service requirements) over a swapped-in
 * `LanguageModel` layer that replays a script. No HTTP at all.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Layer, Schema, Stream } from "effect"
import { LanguageModel, type Prompt, type Response, Tool, Toolkit } from "effect/ai"
import * as Assistant from "../../src/agents/Assistant.ts"
import * as AgentRegistryLayer from "../../src/layers/AgentRegistry.ts"
import * as AgentRuntime from "../../src/layers/AgentRuntime.ts"
import * as ConversationStoreMemory from "../../src/layers/ConversationStoreMemory.ts"
import { RecordedEvents } from "../../src/layers/WebSocketBridgeRecording.ts"
import * as WebSocketBridgeRecording from "../../src/layers/WebSocketBridgeRecording.ts"
import { ExecutionEngineFactory } from "../../src/services/ExecutionEngineFactory.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"
import { QuietLogs, runInvariants } from "../fixtures/runtime.ts"

/** An embedder's service that its tool needs. */
class Inventory extends Context.Service<Inventory, {
  readonly count: (sku: string) => Effect.Effect<number>
}>()("test/Inventory") {}

const StockLevel = Tool.make("stock_level", {
  description: "Units in stock for a SKU",
  parameters: Schema.Struct({ sku: Schema.String }),
  success: Schema.Number,
  dependencies: [Inventory]
})
const Reorder = Tool.make("reorder", {
  description: "Places a reorder",
  parameters: Schema.Struct({ sku: Schema.String, units: Schema.Int }),
  success: Schema.String
})
const ShopTools = Toolkit.make(StockLevel, Reorder)

const usage = { inputTokens: { total: 1 }, outputTokens: { total: 1 } }

/** A model that answers each call with the next turn of `turns`, and records each prompt. */
const scriptedModel = (turns: ReadonlyArray<ReadonlyArray<Response.StreamPartEncoded>>, prompts: Array<Prompt.Prompt>) =>
  Layer.effect(
    LanguageModel.LanguageModel,
    LanguageModel.make({
      generateText: () => Effect.succeed([]),
      streamText: (options) =>
        Stream.suspend(() => {
          prompts.push(options.prompt)
          return Stream.fromIterable(turns[Math.min(prompts.length - 1, turns.length - 1)]!)
        })
    })
  )

describe("assistant over a scripted LanguageModel (embedding)", () => {
  it.live("runs the embedder's tools concurrently, each with its own events, and streams the answer", () =>
    Effect.gen(function*() {
      const prompts: Array<Prompt.Prompt> = []
      // each tool waits until the other has started: this only finishes if the two run concurrently
      const stockStarted = yield* Deferred.make<void>()
      const reorderStarted = yield* Deferred.make<void>()
      const handlers = ShopTools.toLayer({
        stock_level: ({ sku }) =>
          Effect.gen(function*() {
            yield* Deferred.succeed(stockStarted, undefined)
            yield* Deferred.await(reorderStarted)
            return yield* (yield* Inventory).count(sku)
          }),
        reorder: ({ sku, units }) =>
          Effect.gen(function*() {
            yield* Deferred.succeed(reorderStarted, undefined)
            yield* Deferred.await(stockStarted)
            return `ordered ${units} × ${sku}`
          })
      })
      const model = scriptedModel([
        [
          { type: "tool-call", id: "t1", name: "stock_level", params: { sku: "A-1" } },
          { type: "tool-call", id: "t2", name: "reorder", params: { sku: "A-1", units: 5 } },
          { type: "finish", reason: "tool-calls", usage }
        ],
        [
          { type: "text-start", id: "m" },
          { type: "text-delta", id: "m", delta: "3 in stock, " },
          { type: "text-delta", id: "m", delta: "5 more ordered." },
          { type: "text-end", id: "m" },
          { type: "finish", reason: "stop", usage }
        ]
      ], prompts)
      const shopAssistant = Assistant.make({ name: "shop", toolkit: ShopTools, coalesceMs: 0 })
      const runtime = AgentRuntime.layerWithoutBridge.pipe(
        Layer.provideMerge(WebSocketBridgeRecording.layer),
        Layer.provide(AgentRegistryLayer.layer([shopAssistant])),
        Layer.provide(handlers),
        Layer.provide(Layer.succeed(Inventory, { count: () => Effect.succeed(3) })),
        Layer.provide(ConversationStoreMemory.layer()),
        Layer.provide(model),
        Layer.provide(QuietLogs)
      )
      const { events, outcome } = yield* Effect.gen(function*() {
        const engines = yield* ExecutionEngineFactory
        const context = yield* UserExecutionContext.make({ user_id: "alice" })
        const outcome = yield* Effect.scoped(Effect.flatMap(engines.createForUser(context), (engine) => engine.run("shop", "restock A-1")))
        return { outcome, events: yield* (yield* RecordedEvents).ofRun(context.run_id) }
      }).pipe(Effect.provide(runtime))

      expect(runInvariants(events)).toEqual([])
      expect(outcome).toMatchObject({ status: "completed", final_response: "3 in stock, 5 more ordered." })
      const types = events.map((e) => e.type)
      expect(types.filter((t) => t === "tool_executing")).toHaveLength(2)
      expect(types.filter((t) => t === "tool_completed")).toHaveLength(2)
      expect(events.filter((e) => e.type === "tool_completed").map((e) => e.type === "tool_completed" && e.results.output).sort())
        .toEqual([3, "ordered 5 × A-1"])
      expect(events.filter((e) => e.type === "partial_result").map((e) => e.type === "partial_result" && e.delta))
        .toEqual(["3 in stock, ", "5 more ordered."])
      // the second model call got both results back
      const toolMessage = prompts[1]!.content.find((m) => m.role === "tool")
      expect(toolMessage?.content.map((p) => p.type === "tool-result" && [p.id, p.result])).toEqual([["t1", 3], ["t2", "ordered 5 × A-1"]])
    }))
})
