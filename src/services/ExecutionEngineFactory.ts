/**
 * ExecutionEngineFactory: one scoped `UserExecutionEngine` per request, and the
 * runs started in the background.
 *
 * `createForUser(context)` gives an engine holding only that run's state (its
 * emitter and sequence), released when the surrounding scope closes. `start`
 * admits a run (`RunAdmission`) and forks it as a fiber that can be found and
 * stopped by `run_id`, thread or user; every started run ends with exactly one
 * root `agent_completed`, whatever ends it (its own end, a stop, its timeout,
 * shutdown). Implemented by `layers/ExecutionEngineFactory.ts`, whose layer
 * requires `AgentInstanceFactory`, `WebSocketBridge`, `RunAdmission` and
 * `AgentwireConfig` (run timeout).
 *
 * @module
 */
import { Context, type Effect, type Scope } from "effect"
import type { AgentOutcome } from "./AgentInstanceFactory.ts"
import type { UnknownAgentError } from "./AgentRegistry.ts"
import type { AdmissionError } from "./RunAdmission.ts"
import type { RunControlUnavailableError } from "./RunControl.ts"
import type { RunEmitter } from "./RunEmitter.ts"
import type { UserExecutionContext } from "./UserExecutionContext.ts"

/** Per-request engine: runs agents for exactly one `UserExecutionContext`. */
export interface UserExecutionEngine {
  readonly context: UserExecutionContext
  /** This run's emitter: every event of the run passes through it. */
  readonly emitter: RunEmitter
  /** Runs `agent_name` (default agent when undefined) to its end and reports the outcome. */
  readonly run: (agent_name: string | undefined, request: string) => Effect.Effect<AgentOutcome, UnknownAgentError>
}

/** A run started (or, for a duplicate `request_id`, found) by `start`. */
export interface RunHandle {
  readonly run_id: string
  readonly thread_id: string
  readonly request_id: string
  readonly agent_name: string
  /** True when the `request_id` matched an earlier run: nothing new was started. */
  readonly duplicate: boolean
  /** Waits for the run's outcome (as its clients saw it). */
  readonly await: Effect.Effect<AgentOutcome>
}

/** Options of `start`. */
export interface StartOptions {
  /** The client chose the `request_id`: a repeat within the window is a duplicate, not a new run. */
  readonly idempotent?: boolean | undefined
  /** The client named the thread: a repeat must name the original run's thread. */
  readonly threadGiven?: boolean | undefined
  /** Spend one start from the user's start budget (client-initiated starts; refusals spend nothing). */
  readonly rateLimited?: boolean | undefined
  /**
   * Runs first in the run's fiber, before its first event (for duplicates: at
   * once): where a transport acknowledges the start (`run_accepted`).
   */
  readonly onAccepted?: ((handle: Omit<RunHandle, "await">) => Effect.Effect<void>) | undefined
}

/** Which runs `stop` ends: all runs of `user_id`, or one run, or the runs of one thread. */
export interface RunSelector {
  readonly user_id: string
  readonly run_id?: string | undefined
  readonly thread_id?: string | undefined
}

/** What the engine knows of a run of a user: running, ended (recently), or nothing (unknown or another user's). */
export type RunState = "active" | "ended" | "unknown"

export class ExecutionEngineFactory extends Context.Service<ExecutionEngineFactory, {
  /** An engine for one run, released when the scope closes. */
  readonly createForUser: (context: UserExecutionContext) => Effect.Effect<UserExecutionEngine, never, Scope.Scope>
  /**
   * Resolves the agent, admits the run, then runs it in the background on a
   * fresh engine. The run's events go to the context's user through the bridge.
   */
  readonly start: (
    context: UserExecutionContext,
    agent_name: string | undefined,
    request: string,
    options?: StartOptions
  ) => Effect.Effect<RunHandle, UnknownAgentError | AdmissionError>
  /**
   * Stops the selected runs of the user (cause `user_request`), waits for their
   * terminal events and for their admission slots to be free again, and returns the ids of the runs that were actually stopped
   * (a run that ended on its own meanwhile is not listed). Runs of other users
   * are never touched. A run executing on this instance is stopped here
   * whatever the other instances or Redis do. Fails with
   * `RunControlUnavailableError` when selected runs may execute on instances
   * that cannot be reached now (Redis unreachable, an owner that does not
   * answer while its lease holds); the runs of this instance are stopped all the same.
   */
  readonly stop: (selector: RunSelector) => Effect.Effect<ReadonlyArray<string>, RunControlUnavailableError>
  /** What the engine knows of `run_id` for `user_id` (another user's run is `unknown`). */
  readonly runState: (user_id: string, run_id: string) => Effect.Effect<RunState>
  /** Stops a running run as if by its user; false when no such run runs. */
  readonly interrupt: (run_id: string) => Effect.Effect<boolean>
  /**
   * Stops every run in flight (cause `server_shutdown`) and waits until none is
   * left; each still sends its terminal events.
   */
  readonly interruptAll: Effect.Effect<void>
  /** Waits until no run is in flight, or `timeoutMs` passed; true when none is left. */
  readonly drain: (timeoutMs: number) => Effect.Effect<boolean>
  /** Closes admission: every later `start` fails with `shutting_down`. Idempotent. */
  readonly closeAdmission: Effect.Effect<void>
  /** False once admission closed. */
  readonly admissionOpen: Effect.Effect<boolean>
  /** Runs in flight. */
  readonly activeRuns: Effect.Effect<number>
  /** Engines currently allocated (released ones are not counted). */
  readonly liveEngines: Effect.Effect<number>
  /**
   * Forgets the user's ended runs (ids, thread, agent, cut answer) and what
   * admission remembers of them (request ids), for an erase of their data.
   * Runs in flight are not touched: stop them first.
   */
  readonly forgetUser: (user_id: string) => Effect.Effect<void>
}>()("agentwire/ExecutionEngineFactory") {}
