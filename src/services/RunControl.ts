/**
 * RunControl: reaching runs that execute on another instance.
 *
 * With several instances a user's run may execute on one instance while the
 * user's `stop_agent` (or `POST /api/runs/{id}/stop`) arrives on another.
 * `ExecutionEngineFactory` stops the selected runs it executes itself and asks
 * `RunControl` for the rest: `stopRemote` stops the selected runs executing
 * elsewhere and answers once each has ended, with the ids of the runs that
 * were stopped, as a local stop does; every instance `serve`s those requests
 * with its own local stop. Implementations: `layers/RunControlMemory.ts` (one
 * process: nothing is remote) and `layers/RunControlRedis.ts`.
 *
 * The engine factory looks it up as an optional service: without it, stops
 * are local only (the single-process behaviour).
 *
 * @module
 */
import { Context, Data, type Effect, type Scope } from "effect"
import type { RunSelector } from "./ExecutionEngineFactory.ts"

/** A run of a user executing on another instance. */
export interface RemoteRun {
  readonly run_id: string
  readonly thread_id: string
  readonly agent_name: string
  /** The instance executing it. */
  readonly instance_id: string
}

/**
 * A stop could not reach the instance that runs the run (Redis unreachable, or
 * that instance did not answer while its lease still holds): the run may
 * still be running. Retry after `retry_after_ms`; clients see `SERVER_BUSY`.
 */
export class RunControlUnavailableError extends Data.TaggedError("RunControlUnavailableError")<{
  readonly message: string
  /** When a retry may succeed, in ms. */
  readonly retry_after_ms: number
}> {}

export class RunControl extends Context.Service<RunControl, {
  /** The user's runs executing on other instances (never this instance's). Empty when that cannot be known now. */
  readonly remoteRuns: (user_id: string) => Effect.Effect<ReadonlyArray<RemoteRun>>
  /**
   * Stops the selected runs of `selector.user_id` that execute on other
   * instances (cause `user_request`), waits until they ended (their terminal
   * events were published before the answer), and returns the ids of the runs
   * that were stopped. Runs of an instance that is gone (or whose lease
   * expired while it did not answer: another instance closes them) are not
   * listed. Fails with `RunControlUnavailableError` when the runs' instances
   * cannot be known or reached (Redis unreachable) or an owner with a live
   * slot did not answer in time.
   */
  readonly stopRemote: (selector: RunSelector) => Effect.Effect<ReadonlyArray<string>, RunControlUnavailableError>
  /** Answers other instances' stop requests with `stopLocal` until the scope closes. */
  readonly serve: (stopLocal: (selector: RunSelector) => Effect.Effect<ReadonlyArray<string>>) => Effect.Effect<void, never, Scope.Scope>
}>()("agentwire/RunControl") {}
