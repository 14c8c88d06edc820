/**
 * The agent API: what an embedder writes to add an agent.
 *
 * An agent is a named Effect program. It receives the user's request and a
 * per-run `AgentContext` through which it reports thinking, runs tools (each call
 * sends `tool_executing` / `tool_completed` by itself) and delegates to sub-agents.
 * The context is bound to one run: an agent cannot emit anywhere else. The
 * agent's own service requirements `R` show in its type and travel into the
 * requirements of the registry layer that holds it.
 *
 * @module
 */
import { Data, type Duration, type Effect } from "effect"

/** A failure an agent reports on purpose: becomes `agent_error {code, message}`. */
export class AgentError extends Data.TaggedError("AgentError")<{
  readonly code: string
  readonly message: string
}> {}

/** A failed tool call (its `tool_completed` event has already been sent). */
export class ToolError extends Data.TaggedError("ToolError")<{
  readonly tool_name: string
  readonly execution_id: string
  readonly status: "error" | "timeout"
  readonly message: string
}> {}

/** Options of one tool call. */
export interface ToolOptions<E> {
  /** Fails the call with status `timeout` after this long. */
  readonly timeout?: Duration.Input | undefined
  /** Turns the tool's typed failure into the `error` text of `tool_completed`. */
  readonly describeError?: ((error: E) => string) | undefined
}

/** The per-run context an agent works through. */
export interface AgentContext {
  readonly agent_name: string
  /** 0 for the run's root agent, 1+ for sub-agents. */
  readonly depth: number
  readonly user_id: string
  readonly thread_id: string
  readonly run_id: string
  readonly request_id: string
  /** Sends `agent_thinking`. */
  readonly think: (reasoning: string, step_number?: number) => Effect.Effect<void>
  /**
   * Sends `partial_result {message_id, delta}`: a piece of an answer being
   * generated. Deltas of one `message_id` concatenate to that message's text.
   * Sent as given (no coalescing here; an agent that streams coalesces itself).
   */
  readonly partial: (message_id: string, delta: string) => Effect.Effect<void>
  /**
   * Runs `effect` as the tool `tool_name`: sends `tool_executing`, then
   * `tool_completed` with timing and the output or the typed failure.
   */
  readonly tool: <A, E, R>(
    tool_name: string,
    parameters: Readonly<Record<string, unknown>>,
    effect: Effect.Effect<A, E, R>,
    options?: ToolOptions<E>
  ) => Effect.Effect<A, ToolError, R>
  /** Runs another registered agent at `depth + 1` and returns its final response. */
  readonly delegate: (agent_name: string, request: string) => Effect.Effect<string, AgentError>
}

/** An agent definition. `R` is what it needs from the embedder. */
export interface Agent<R = never> {
  readonly name: string
  readonly description: string
  readonly run: (request: string, context: AgentContext) => Effect.Effect<string, AgentError | ToolError, R>
}

/** Defines an agent. */
export const make = <R = never>(
  name: string,
  definition: {
    readonly description: string
    readonly run: (request: string, context: AgentContext) => Effect.Effect<string, AgentError | ToolError, R>
  }
): Agent<R> => ({ name, ...definition })

/** The services an agent (or a union of agents) requires. */
export type Services<A> = A extends Agent<infer R> ? R : never
