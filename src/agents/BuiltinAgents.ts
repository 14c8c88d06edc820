/**
 * The built-in agents and a registry layer holding them (`supervisor` default).
 *
 * @module
 */
import type { Layer } from "effect"
import * as AgentRegistryLayer from "../layers/AgentRegistry.ts"
import type { AgentRegistry, AgentRegistryError } from "../services/AgentRegistry.ts"
import { calculator } from "./Calculator.ts"
import { echo } from "./Echo.ts"
import { supervisor, triage } from "./Supervisor.ts"
import { ticker } from "./Ticker.ts"

/** supervisor, triage, calculator, echo, ticker. */
export const builtinAgents = [supervisor, triage, calculator, echo, ticker] as const

/** A registry of the built-in agents with `supervisor` as the default. */
export const layer: Layer.Layer<AgentRegistry, AgentRegistryError> = AgentRegistryLayer.layer(builtinAgents, {
  defaultAgent: "supervisor"
})
