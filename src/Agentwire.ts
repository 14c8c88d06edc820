/**
 * The whole service as layers, for `src/main.ts` and for embedders.
 *
 * - `layerServer(registry)`: server + auth + agent runtime over a registry
 *   layer; requires `AgentwireConfig` (see `layers/AgentwireConfig.ts`).
 * - `layerServerFromEnv`: the same with the built-in agents and the config read
 *   from environment variables; what `npm start` launches.
 *
 * @module
 */
import { Layer } from "effect"
import * as BuiltinAgents from "./agents/BuiltinAgents.ts"
import * as AgentRuntime from "./layers/AgentRuntime.ts"
import * as AgentwireConfigLayer from "./layers/AgentwireConfig.ts"
import * as AuthJwt from "./layers/AuthJwt.ts"
import * as DemoBanner from "./layers/DemoBanner.ts"
import * as Server from "./layers/Server.ts"
import type { AgentInstanceFactory } from "./services/AgentInstanceFactory.ts"
import type { AgentRegistry } from "./services/AgentRegistry.ts"
import type { AgentwireConfig } from "./services/AgentwireConfig.ts"
import type { AgentwireServer } from "./services/AgentwireServer.ts"
import type { Auth } from "./services/Auth.ts"
import type { ExecutionEngineFactory } from "./services/ExecutionEngineFactory.ts"
import type { WebSocketBridge } from "./services/WebSocketBridge.ts"

/** Everything the server layer provides, for embedders that want to use the services too. */
export type ServerServices = AgentwireServer | Auth | ExecutionEngineFactory | AgentInstanceFactory | WebSocketBridge

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

/** The built-in agents, configuration from the environment: what `npm start` runs. */
export const layerServerFromEnv = layerServerWithBanner(BuiltinAgents.layer).pipe(
  Layer.provideMerge(AgentwireConfigLayer.layerFromEnv)
)

// Compile-time check that the composition is complete.
const _check: Layer.Layer<ServerServices | AgentwireConfig, unknown, never> = layerServerFromEnv
void _check
