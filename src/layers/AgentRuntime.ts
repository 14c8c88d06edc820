/**
 * The agent runtime in one layer: `ExecutionEngineFactory`,
 * `AgentInstanceFactory`, `RunAdmission` and `RunLog` (in memory) and `WebSocketBridge`,
 * wired in the one order that type-checks. It requires the `AgentRegistry`,
 * which is where an embedder's agents (and their own requirements) come in.
 * The run limits, timeout and log retention come from `AgentwireConfig` when one is provided
 * around it, else from the documented defaults.
 *
 * @module
 */
import { Layer } from "effect"
import type { AgentInstanceFactory } from "../services/AgentInstanceFactory.ts"
import type { AgentRegistry } from "../services/AgentRegistry.ts"
import type { ExecutionEngineFactory } from "../services/ExecutionEngineFactory.ts"
import type { RunAdmission } from "../services/RunAdmission.ts"
import type { RunLog } from "../services/RunLog.ts"
import type { WebSocketBridge } from "../services/WebSocketBridge.ts"
import * as AgentInstanceFactoryLayer from "./AgentInstanceFactory.ts"
import * as ExecutionEngineFactoryLayer from "./ExecutionEngineFactory.ts"
import * as RunAdmissionMemory from "./RunAdmissionMemory.ts"
import * as RunLogMemory from "./RunLogMemory.ts"
import * as WebSocketBridgeMemory from "./WebSocketBridgeMemory.ts"

/**
 * The two factories, still requiring a `WebSocketBridge`: provide the in-memory
 * one, a recording test double, or your own.
 */
export const layerWithoutBridge: Layer.Layer<
  ExecutionEngineFactory | AgentInstanceFactory | RunAdmission | RunLog,
  never,
  WebSocketBridge | AgentRegistry
> = ExecutionEngineFactoryLayer.layer.pipe(
  Layer.provideMerge(AgentInstanceFactoryLayer.layer),
  Layer.provideMerge(RunAdmissionMemory.layerConfig),
  Layer.provideMerge(RunLogMemory.layerConfig)
)

/** The runtime over the in-memory bridge. */
export const layer: Layer.Layer<ExecutionEngineFactory | AgentInstanceFactory | RunAdmission | RunLog | WebSocketBridge, never, AgentRegistry> =
  layerWithoutBridge.pipe(Layer.provideMerge(WebSocketBridgeMemory.layer))
