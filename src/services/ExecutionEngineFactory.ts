/**
 * ExecutionEngineFactory: one scoped `UserExecutionEngine` per request.
 *
 * `createForUser(context)` gives an engine holding only that run's state (its
 * emitter and sequence), released when the surrounding scope closes. `start`
 * forks a whole run as a fiber that can be found and interrupted by `run_id`.
 * Implemented by `layers/ExecutionEngineFactory.ts`, whose layer requires
 * `AgentInstanceFactory` and `WebSocketBridge`.
 *
 * @module
 */
import { Context, Data, type Effect, type Scope } from "effect"
import type { AgentOutcome } from "./AgentInstanceFactory.ts"
import type { UnknownAgentError } from "./AgentRegistry.ts"
import type { RunEmitter } from "./RunEmitter.ts"
import type { UserExecutionContext } from "./UserExecutionContext.ts"

/** `start` was called after admission closed (the server is shutting down): no run was started. */
export class AdmissionClosedError extends Data.TaggedError("AdmissionClosedError")<{}> {
  override get message(): string {
    return "the server is shutting down and accepts no new runs; retry on another instance or after it restarts"
  }
}

/** Per-request engine: runs agents for exactly one `UserExecutionContext`. */
export interface UserExecutionEngine {
  readonly context: UserExecutionContext
  /** This run's emitter: every event of the run passes through it. */
  readonly emitter: RunEmitter
  /** Runs `agent_name` (default agent when undefined) to its end and reports the outcome. */
  readonly run: (agent_name: string | undefined, request: string) => Effect.Effect<AgentOutcome, UnknownAgentError>
}

/** A run started in the background by `start`. */
export interface RunHandle {
  readonly run_id: string
  readonly thread_id: string
  readonly request_id: string
  readonly agent_name: string
  /** Waits for the run's outcome. */
  readonly await: Effect.Effect<AgentOutcome>
}

export class ExecutionEngineFactory extends Context.Service<ExecutionEngineFactory, {
  /** An engine for one run, released when the scope closes. */
  readonly createForUser: (context: UserExecutionContext) => Effect.Effect<UserExecutionEngine, never, Scope.Scope>
  /**
   * Checks the agent exists, then runs it in the background on a fresh engine.
   * The run's events go to the context's user through the bridge.
   */
  readonly start: (
    context: UserExecutionContext,
    agent_name: string | undefined,
    request: string
  ) => Effect.Effect<RunHandle, UnknownAgentError | AdmissionClosedError>
  /**
   * Closes admission: every later `start` fails with `AdmissionClosedError`.
   * Runs already started go on (see `interruptAll`). Idempotent.
   */
  readonly closeAdmission: Effect.Effect<void>
  /** False once admission closed. */
  readonly admissionOpen: Effect.Effect<boolean>
  /** Interrupts a running run; its terminal events are still sent. False when no such run runs. */
  readonly interrupt: (run_id: string) => Effect.Effect<boolean>
  /**
   * Interrupts every run in flight (shutdown) and waits until none is left;
   * each still sends its terminal events.
   */
  readonly interruptAll: Effect.Effect<void>
  /** Runs in flight. */
  readonly activeRuns: Effect.Effect<number>
  /** Engines currently allocated (released ones are not counted). */
  readonly liveEngines: Effect.Effect<number>
}>()("agentwire/ExecutionEngineFactory") {}
