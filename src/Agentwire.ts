/**
 * The whole service as layers, for `src/main.ts` and for embedders.
 *
 * - `layerServer(registry)`: server + auth + agent runtime over a registry
 *   layer; requires `AgentwireConfig` (see `layers/AgentwireConfig.ts`).
 * - `layerServerFromEnv`: the same with the built-in agents and the config read
 *   from environment variables; what `npm start` launches.
 * - `layerBuiltinRegistry(settings)`: the built-in agents for `settings`; with
 *   `AGENTWIRE_LLM_*` set, `assistant` (default) over the OpenAI-compatible
 *   model and the in-memory conversation store.
 *
 * @module
 */
import { Effect, Layer, Option } from "effect"
import * as BuiltinAgents from "./agents/BuiltinAgents.ts"
import * as AgentRuntime from "./layers/AgentRuntime.ts"
import * as AgentwireConfigLayer from "./layers/AgentwireConfig.ts"
import * as AuthJwt from "./layers/AuthJwt.ts"
import * as ConversationStoreMemory from "./layers/ConversationStoreMemory.ts"
import * as DemoBanner from "./layers/DemoBanner.ts"
import * as OpenAiCompatible from "./layers/OpenAiCompatible.ts"
import * as Server from "./server/Server.ts"
import type { AgentInstanceFactory } from "./services/AgentInstanceFactory.ts"
import type { AgentRegistry, AgentRegistryError } from "./services/AgentRegistry.ts"
import type { AgentwireConfig, AgentwireSettings } from "./services/AgentwireConfig.ts"
import type { AgentwireServer } from "./services/AgentwireServer.ts"
import type { Auth } from "./services/Auth.ts"
import type { ExecutionEngineFactory } from "./services/ExecutionEngineFactory.ts"
import type { RunLog } from "./services/RunLog.ts"
import type { WebSocketBridge } from "./services/WebSocketBridge.ts"

/** Everything the server layer provides, for embedders that want to use the services too. */
export type ServerServices = AgentwireServer | Auth | ExecutionEngineFactory | AgentInstanceFactory | WebSocketBridge | RunLog

/** The server with the agents of `registry`, over the in-memory bridge. */
export const layerServer = <E, R>(
  registry: Layer.Layer<AgentRegistry, E, R>
) =>
  Server.layer.pipe(
    Layer.provideMerge(AuthJwt.layer),
    Layer.provideMerge(AgentRuntime.layer),
    Layer.provide(registry)
  )

/** `layerServer` plus the demo banner (prints a token when the secret was generated). */
export const layerServerWithBanner = <E, R>(registry: Layer.Layer<AgentRegistry, E, R>) =>
  DemoBanner.layer.pipe(Layer.provideMerge(layerServer(registry)))

/**
 * The built-in agents for `settings`: with a language model configured
 * (`settings.llm`), `assistant` is the default, over `OpenAiCompatible` and an
 * in-memory `ConversationStore`; without, `supervisor` is.
 */
export const layerBuiltinRegistry = (settings: AgentwireSettings): Layer.Layer<AgentRegistry, AgentRegistryError> =>
  Option.match(settings.llm, {
    onNone: () => BuiltinAgents.layer,
    onSome: (llm) =>
      BuiltinAgents.layerWithAssistant({ maxSteps: llm.maxSteps, coalesceMs: settings.streamCoalesceMs }).pipe(
        Layer.provide(OpenAiCompatible.layerNode(OpenAiCompatible.optionsFromSettings(llm))),
        Layer.provide(ConversationStoreMemory.layer())
      )
  })

/** The built-in agents, configuration from the environment: what `npm start` runs. */
export const layerServerFromEnv = Layer.unwrap(Effect.map(AgentwireConfigLayer.fromEnv, (settings) =>
  layerServerWithBanner(layerBuiltinRegistry(settings)).pipe(
    Layer.provideMerge(AgentwireConfigLayer.layer(settings))
  )))

// Compile-time check that the composition is complete.
const _check: Layer.Layer<ServerServices | AgentwireConfig, unknown, never> = layerServerFromEnv
void _check
