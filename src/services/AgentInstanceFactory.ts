/**
 * AgentInstanceFactory: a fresh agent instance per run, bound to that run's emitter.
 *
 * Implemented by `layers/AgentInstanceFactory.ts`, whose layer requires the
 * `WebSocketBridge` and the `AgentRegistry`.
 *
 * @module
 */
import { Context, type Effect, type Scope } from "effect"
import type { UnknownAgentError } from "./AgentRegistry.ts"
import type { RunEmitter } from "./RunEmitter.ts"
import type { UserExecutionContext } from "./UserExecutionContext.ts"

/**
 * How one agent run ended: `completed`, `failed` (with `error`), `cancelled`
 * (stopped by its user or by shutdown) or `timed_out` (with `error` RUN_TIMEOUT).
 */
export interface AgentOutcome {
  readonly status: "completed" | "failed" | "cancelled" | "timed_out"
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
   * Runs the agent: `agent_started` … `agent_completed`. Never fails: a failure
   * or defect becomes `agent_error` then `agent_completed {failed}`; an
   * interruption ends it as the run's stop cause says (`RunEmitter.stopCause`):
   * at depth 0 `agent_stopped` + `cancelled`, or `agent_error RUN_TIMEOUT` +
   * `timed_out`; below depth 0 `agent_completed {cancelled}`.
   */
  readonly run: (request: string) => Effect.Effect<AgentOutcome>
}

export class AgentInstanceFactory extends Context.Service<AgentInstanceFactory, {
  /** The registered agents' names, default first. */
  readonly agentNames: ReadonlyArray<string>
  /** Resolves an optional agent name (the default when absent) to a registered one. */
  readonly resolve: (agent_name: string | undefined) => Effect.Effect<string, UnknownAgentError>
  /**
   * Creates a root (depth 0) instance of `agent_name` for the run `context`.
   * Its events go through the run's one emitter (see `emitterFor`), so two
   * instances of one `run_id` share one sequence.
   */
  readonly create: (agent_name: string | undefined, context: UserExecutionContext) => Effect.Effect<AgentInstance, UnknownAgentError>
  /**
   * The emitter of the run `context.run_id`, held until the scope closes: the
   * one owner of that run's sequence while anyone holds it (engine, root
   * instance, sub-agents). A second holder of a live run gets the same emitter.
   */
  readonly emitterFor: (context: UserExecutionContext) => Effect.Effect<RunEmitter, never, Scope.Scope>
}>()("agentwire/AgentInstanceFactory") {}
