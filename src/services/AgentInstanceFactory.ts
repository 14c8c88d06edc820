/**
 * AgentInstanceFactory: a fresh agent instance per run, bound to that run's emitter.
 *
 * Implemented by `layers/AgentInstanceFactory.ts`, whose layer requires the
 * `WebSocketBridge` and the `AgentRegistry`.
 *
 * @module
 */
import { Context, type Effect } from "effect"
import type { UnknownAgentError } from "./AgentRegistry.ts"
import type { RunEmitter } from "./RunEmitter.ts"
import type { UserExecutionContext } from "./UserExecutionContext.ts"

/** How one agent run ended. */
export interface AgentOutcome {
  readonly status: "completed" | "failed"
  readonly final_response: string
  readonly duration_ms: number
  readonly error?: { readonly code: string; readonly message: string }
}

/** One agent bound to one run. */
export interface AgentInstance {
  readonly agent_name: string
  readonly depth: number
  readonly context: UserExecutionContext
  /**
   * Runs the agent: `agent_started` … `agent_completed`. Never fails; a failure,
   * defect or interruption becomes `agent_error` then `agent_completed {failed}`.
   */
  readonly run: (request: string) => Effect.Effect<AgentOutcome>
}

export class AgentInstanceFactory extends Context.Service<AgentInstanceFactory, {
  /** The registered agents' names, default first. */
  readonly agentNames: ReadonlyArray<string>
  /** Resolves an optional agent name (the default when absent) to a registered one. */
  readonly resolve: (agent_name: string | undefined) => Effect.Effect<string, UnknownAgentError>
  /**
   * Creates an instance of `agent_name` for the run `context`. Without `emitter`
   * a new one is made on the bridge; `depth` defaults to 0.
   */
  readonly create: (
    agent_name: string | undefined,
    context: UserExecutionContext,
    options?: { readonly emitter?: RunEmitter | undefined; readonly depth?: number | undefined }
  ) => Effect.Effect<AgentInstance, UnknownAgentError>
}>()("agentwire/AgentInstanceFactory") {}
