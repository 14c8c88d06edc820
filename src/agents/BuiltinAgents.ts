/**
 * The built-in agents and registry layers holding them: `layer` (`supervisor`
 * default; `assistant` answers `UNKNOWN_AGENT` naming the settings that enable
 * it) and `layerWithAssistant` (`assistant` default, requiring a
 * `LanguageModel` and a `ConversationStore`).
 *
 * @module
 */
import { Layer } from "effect"
import type { LanguageModel } from "effect/ai"
import * as AgentRegistryLayer from "../layers/AgentRegistry.ts"
import type { AgentRegistry, AgentRegistryError } from "../services/AgentRegistry.ts"
import type { ConversationStore } from "../services/ConversationStore.ts"
import { assistant } from "./Assistant.ts"
import { BuiltinToolkitLayer } from "./AssistantTools.ts"
import { calculator } from "./Calculator.ts"
import { echo } from "./Echo.ts"
import { supervisor, triage } from "./Supervisor.ts"
import { ticker } from "./Ticker.ts"

/** supervisor, triage, calculator, echo, ticker. */
export const builtinAgents = [supervisor, triage, calculator, echo, ticker] as const

/** A registry of the built-in agents with `supervisor` as the default. */
export const layer: Layer.Layer<AgentRegistry, AgentRegistryError> = AgentRegistryLayer.layer(builtinAgents, {
  defaultAgent: "supervisor",
  unavailable: { assistant: "assistant needs a language model: set AGENTWIRE_LLM_BASE_URL and AGENTWIRE_LLM_MODEL" }
})

/** Settings of the built-in `assistant`. */
export interface AssistantSettings {
  /** Model turns per run (`AGENTWIRE_LLM_MAX_STEPS`). */
  readonly maxSteps: number
  /** `partial_result` coalescing interval, ms (`AGENTWIRE_STREAM_COALESCE_MS`). */
  readonly coalesceMs: number
}

/**
 * `assistant` (the default, with `calculate` and `current_time`) plus the
 * built-in agents. Requires the model and the conversation store.
 */
export const layerWithAssistant = (
  settings: AssistantSettings
): Layer.Layer<AgentRegistry, AgentRegistryError, LanguageModel.LanguageModel | ConversationStore> =>
  AgentRegistryLayer.layer([assistant(settings), ...builtinAgents], { defaultAgent: "assistant" }).pipe(
    Layer.provide(BuiltinToolkitLayer)
  )
