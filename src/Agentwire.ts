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
 * - `layerApp(settings, history)`: what `src/main.ts` runs: the server and the
 *   built-in agents over durable history (`layers/History.ts`: SQLite in
 *   `AGENTWIRE_DATA_DIR`, or PostgreSQL at `AGENTWIRE_DATABASE_URL`), one store
 *   shared by the engine (which records runs), the `assistant` (which reads
 *   them) and the thread API.
 *
 * @module
 */
import { Effect, Layer, Option, type Redacted } from "effect"
import * as BuiltinAgents from "./agents/BuiltinAgents.ts"
import * as AgentRuntime from "./layers/AgentRuntime.ts"
import * as AgentwireConfigLayer from "./layers/AgentwireConfig.ts"
import * as AuthJwt from "./layers/AuthJwt.ts"
import * as ConversationStoreMemory from "./layers/ConversationStoreMemory.ts"
import * as DemoBanner from "./layers/DemoBanner.ts"
import * as History from "./layers/History.ts"
import * as OpenAiCompatible from "./layers/OpenAiCompatible.ts"
import * as Server from "./server/Server.ts"
import type { AgentInstanceFactory } from "./services/AgentInstanceFactory.ts"
import type { AgentRegistry, AgentRegistryError } from "./services/AgentRegistry.ts"
import type { AgentwireConfig, AgentwireSettings } from "./services/AgentwireConfig.ts"
import type { AgentwireServer, ServerStartError } from "./services/AgentwireServer.ts"
import type { MissingSecretError } from "./services/Auth.ts"
import type { ConversationStore } from "./services/ConversationStore.ts"
import type { Auth } from "./services/Auth.ts"
import type { ExecutionEngineFactory } from "./services/ExecutionEngineFactory.ts"
import type { RedisStartError } from "./services/RedisStartError.ts"
import type { RunLog } from "./services/RunLog.ts"
import type { WebSocketBridge } from "./services/WebSocketBridge.ts"

/** Everything the server layer provides, for embedders that want to use the services too. */
export type ServerServices = AgentwireServer | Auth | ExecutionEngineFactory | AgentInstanceFactory | WebSocketBridge | RunLog

/** `ServerServices` plus the history store (`layerApp`). */
export type AppServices = ServerServices | ConversationStore

/** The server with the agents of `registry`, over the in-memory bridge. */
export const layerServer = <E, R>(
  registry: Layer.Layer<AgentRegistry, E, R>
) =>
  Server.layer.pipe(
    Layer.provideMerge(AuthJwt.layer),
    Layer.provideMerge(AgentRuntime.layer),
    Layer.provide(registry)
  )

/**
 * The server with the agents of `registry` over the Redis runtime
 * (`AgentRuntime.layerRedis`): several instances share one Redis.
 */
export const layerServerRedis = <E, R>(
  registry: Layer.Layer<AgentRegistry, E, R>,
  url: Redacted.Redacted<string>
) =>
  Server.layer.pipe(
    Layer.provideMerge(AuthJwt.layer),
    Layer.provideMerge(AgentRuntime.layerRedis(url)),
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
  layerBuiltinRegistryOver(settings).pipe(Layer.provide(ConversationStoreMemory.layer()))

/** The built-in agents for `settings`, reading history from the `ConversationStore` provided around them. */
export const layerBuiltinRegistryOver = (settings: AgentwireSettings): Layer.Layer<AgentRegistry, AgentRegistryError, ConversationStore> =>
  Option.match(settings.llm, {
    onNone: () => BuiltinAgents.layer,
    onSome: (llm) =>
      BuiltinAgents.layerWithAssistant({ maxSteps: llm.maxSteps, coalesceMs: settings.streamCoalesceMs }).pipe(
        Layer.provide(OpenAiCompatible.layerNode(OpenAiCompatible.optionsFromSettings(llm)))
      )
  })

/**
 * The server with the banner and the built-in agents over durable history: one
 * `ConversationStore` (`History.layer(history)`) under everything, so it is
 * opened first and closed last (after the runs stopped at shutdown recorded their ends).
 */
export const layerApp = (settings: AgentwireSettings, history: History.HistorySettings) => {
  const registry = layerBuiltinRegistryOver(settings)
  // AGENTWIRE_REDIS_URL set: the runtime for several instances; else everything in process
  const server: Layer.Layer<ServerServices, AgentRegistryError | ServerStartError | MissingSecretError | RedisStartError, AgentwireConfig | ConversationStore> =
    Option.match(settings.redisUrl, {
      onNone: () =>
        // which mode this process runs in, said once at startup (the Redis line is in AgentRuntime.layerRedis)
        Layer.effectDiscard(Effect.logInfo("running in memory, one instance (AGENTWIRE_REDIS_URL unset or empty)")).pipe(
          Layer.provideMerge(layerServer(registry))
        ),
      onSome: (url) => layerServerRedis(registry, url)
    })
  return DemoBanner.layer.pipe(Layer.provideMerge(server), Layer.provideMerge(History.layer(history)))
}

/** The built-in agents, configuration from the environment: what `npm start` runs. */
export const layerServerFromEnv = Layer.unwrap(Effect.gen(function*() {
  const settings = yield* AgentwireConfigLayer.fromEnv
  const history = yield* History.settingsFromEnv
  return layerApp(settings, history).pipe(Layer.provideMerge(AgentwireConfigLayer.layer(settings)))
}))

// Compile-time check that the composition is complete.
const _check: Layer.Layer<AppServices | AgentwireConfig, unknown, never> = layerServerFromEnv
void _check
