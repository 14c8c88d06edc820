/**
 * Compile-time proof that the wiring lives in the types: a program using
 * `ExecutionEngineFactory` without a `WebSocketBridge` does not compile, and the
 * complete composition does. `tsc --noEmit` (part of `npm test`) enforces the
 * `@ts-expect-error` lines: if a requirement were dropped, the directive would
 * be unused and the type-check would fail.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Context, Effect, Layer, Schema } from "effect"
import { type LanguageModel, Tool, Toolkit } from "effect/ai"
import * as Assistant from "../../src/agents/Assistant.ts"
import type { BuiltinToolkit } from "../../src/agents/AssistantTools.ts"
import { expectTypeOf, test } from "vitest"
import * as BuiltinAgents from "../../src/agents/BuiltinAgents.ts"
import * as Agentwire from "../../src/Agentwire.ts"
import * as AgentInstanceFactoryLayer from "../../src/layers/AgentInstanceFactory.ts"
import * as AgentRegistryLayer from "../../src/layers/AgentRegistry.ts"
import * as AgentRuntime from "../../src/layers/AgentRuntime.ts"
import * as ExecutionEngineFactoryLayer from "../../src/layers/ExecutionEngineFactory.ts"
import * as Agent from "../../src/services/Agent.ts"
import type { AgentInstanceFactory } from "../../src/services/AgentInstanceFactory.ts"
import type { AgentRegistry } from "../../src/services/AgentRegistry.ts"
import type { AgentwireConfig } from "../../src/services/AgentwireConfig.ts"
import type { ConversationStore } from "../../src/services/ConversationStore.ts"
import { ExecutionEngineFactory } from "../../src/services/ExecutionEngineFactory.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"
import type { RunAdmission } from "../../src/services/RunAdmission.ts"
import type { RunLog } from "../../src/services/RunLog.ts"
import type { WebSocketBridge } from "../../src/services/WebSocketBridge.ts"

const program = Effect.gen(function*() {
  const engines = yield* ExecutionEngineFactory
  const context = yield* UserExecutionContext.make({ user_id: "alice" })
  return yield* Effect.scoped(Effect.flatMap(engines.createForUser(context), (engine) => engine.run("echo", "hi")))
})

test("the factories' layers declare what they require", () => {
  expectTypeOf<Layer.Services<typeof AgentInstanceFactoryLayer.layer>>().toEqualTypeOf<WebSocketBridge | RunLog | AgentRegistry>()
  expectTypeOf<Layer.Services<typeof ExecutionEngineFactoryLayer.layer>>().toEqualTypeOf<
    AgentInstanceFactory | WebSocketBridge | RunAdmission
  >()
})

test("forgetting the WebSocketBridge does not compile", () => {
  // the engine factory and the instance factory, but no bridge
  const noBridge = AgentRuntime.layerWithoutBridge.pipe(Layer.provide(BuiltinAgents.layer))
  const partial = program.pipe(Effect.provide(noBridge))
  expectTypeOf<Effect.Services<typeof partial>>().toEqualTypeOf<WebSocketBridge>()

  // @ts-expect-error -- WebSocketBridge is not provided, so this must not compile
  NodeRuntime.runMain(partial)

  // building the engine factory on the instance factory alone still leaves the bridge open
  const engineOnly = ExecutionEngineFactoryLayer.layer.pipe(
    Layer.provide(AgentInstanceFactoryLayer.layer),
    Layer.provide(BuiltinAgents.layer)
  )
  // @ts-expect-error -- the bridge is required by both factories and provided to neither
  Effect.runPromise(program.pipe(Effect.provide(engineOnly)))
})

test("the complete composition compiles", () => {
  const full = program.pipe(Effect.provide(AgentRuntime.layer.pipe(Layer.provide(BuiltinAgents.layer))))
  expectTypeOf<Effect.Services<typeof full>>().toEqualTypeOf<never>()
  expectTypeOf(Agentwire.layerServerFromEnv).toExtend<Layer.Layer<AgentwireConfig, unknown, never>>()
})

test("an agent's own requirements travel into the registry layer", () => {
  class Weather extends Context.Service<Weather, { readonly today: Effect.Effect<string> }>()("test/Weather") {}
  const forecaster = Agent.make("forecaster", {
    description: "says the weather",
    run: () => Effect.gen(function*() {
      return yield* (yield* Weather).today
    })
  })
  const registry = AgentRegistryLayer.layer([forecaster])
  expectTypeOf<Layer.Services<typeof registry>>().toEqualTypeOf<Weather>()

  const withoutWeather = program.pipe(Effect.provide(AgentRuntime.layer.pipe(Layer.provide(registry))))
  // @ts-expect-error -- the forecaster needs Weather, which the embedder has not provided
  Effect.runPromise(withoutWeather)

  const withWeather = program.pipe(
    Effect.provide(AgentRuntime.layer.pipe(
      Layer.provide(registry),
      Layer.provide(Layer.succeed(Weather, { today: Effect.succeed("sunny") }))
    ))
  )
  expectTypeOf<Effect.Services<typeof withWeather>>().toEqualTypeOf<never>()
})

test("the assistant's requirements (model, conversation store, tool handlers) show in the registry layer", () => {
  const registry = AgentRegistryLayer.layer([Assistant.assistant()])
  expectTypeOf<Layer.Services<typeof registry>>().toEqualTypeOf<
    LanguageModel.LanguageModel | ConversationStore | Tool.HandlersFor<Toolkit.Tools<typeof BuiltinToolkit>>
  >()
  // the built-in registry with the assistant provides the tool handlers itself
  const builtin = BuiltinAgents.layerWithAssistant({ maxSteps: 8, coalesceMs: 20 })
  expectTypeOf<Layer.Services<typeof builtin>>().toEqualTypeOf<LanguageModel.LanguageModel | ConversationStore>()
  const withoutModel = program.pipe(Effect.provide(AgentRuntime.layer.pipe(Layer.provide(builtin))))
  // @ts-expect-error -- the assistant needs a LanguageModel and a ConversationStore, provided to neither
  Effect.runPromise(withoutModel)
})

test("an embedder's tool requirements travel into the registry layer too", () => {
  class Search extends Context.Service<Search, { readonly find: (q: string) => Effect.Effect<string> }>()("test/Search") {}
  const SearchTool = Tool.make("search", { parameters: Schema.Struct({ q: Schema.String }), success: Schema.String, dependencies: [Search] })
  const tools = Toolkit.make(SearchTool)
  const researcher = Assistant.make({ name: "researcher", toolkit: tools })
  const registry = AgentRegistryLayer.layer([researcher])
  expectTypeOf<Search>().toExtend<Layer.Services<typeof registry>>()
  const handlers = tools.toLayer({ search: ({ q }) => Effect.flatMap(Search, (s) => s.find(q)) })
  const withHandlers = registry.pipe(Layer.provide(handlers))
  expectTypeOf<Layer.Services<typeof withHandlers>>().toEqualTypeOf<LanguageModel.LanguageModel | ConversationStore | Search>()
})

