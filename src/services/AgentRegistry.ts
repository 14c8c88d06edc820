/**
 * AgentRegistry: the agent definitions a process can run, by name.
 *
 * Built by `layers/AgentRegistry.ts` from a list of agents; the agents' own
 * requirements are provided once, when the layer is built, so a registered
 * agent needs nothing more to run.
 *
 * @module
 */
import { Context, Data, type Effect } from "effect"
import type { AgentContext, AgentError, ToolError } from "./Agent.ts"

/** A registered agent whose requirements are already provided. */
export interface RegisteredAgent {
  readonly name: string
  readonly description: string
  readonly run: (request: string, context: AgentContext) => Effect.Effect<string, AgentError | ToolError>
}

/** No agent of that name is registered. */
export class UnknownAgentError extends Data.TaggedError("UnknownAgentError")<{
  readonly agent: string
  readonly available: ReadonlyArray<string>
  /** Why a known but disabled agent cannot run, e.g. which settings enable it. */
  readonly hint?: string | undefined
}> {
  override get message(): string {
    const base = `unknown agent "${this.agent.slice(0, 128)}"; available: ${this.available.join(", ")}`
    return this.hint === undefined ? base : `${base} (${this.hint})`
  }
}

/** The registry could not be built (a startup failure). */
export class AgentRegistryError extends Data.TaggedError("AgentRegistryError")<{
  readonly message: string
}> {}

export class AgentRegistry extends Context.Service<AgentRegistry, {
  /** Agent used when a request names none. */
  readonly defaultAgent: string
  /** Names and descriptions, in registration order. */
  readonly agents: ReadonlyArray<{ readonly name: string; readonly description: string }>
  /** Looks an agent up; `undefined` means the default agent. */
  readonly get: (name: string | undefined) => Effect.Effect<RegisteredAgent, UnknownAgentError>
}>()("agentwire/AgentRegistry") {}
