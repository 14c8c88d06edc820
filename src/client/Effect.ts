/**
 * The Effect-native face of `agentwire/client`: the same client (reconnect,
 * resume, exactly-once per run, token refresh; see `./AgentwireClient.ts`) as
 * a scoped service whose commands are Effects with typed errors and whose run
 * events are a `Stream`.
 *
 * ```ts
 * const program = Effect.gen(function*() {
 *   const client = yield* AgentwireClient
 *   const run = yield* client.start("calculator", "2+3*4")
 *   yield* run.events.pipe(Stream.runForEach((e) => Effect.log(e.seq, e.type)))
 * }).pipe(Effect.provide(layer({ url, token })))
 * ```
 *
 * @module
 */
import { Context, Data, Effect, Layer, Queue, type Scope, Stream } from "effect"
import {
  type AgentEvent,
  type Client,
  ClientClosedError,
  type ClientOptions,
  CommandError,
  connect,
  type ConnectionState,
  type ListRunsOptions,
  type Run,
  RunLostError,
  type RunLostReason,
  type StartOptions
} from "./AgentwireClient.ts"
import type { RunInfo } from "../protocol/Protocol.ts"

/** The server refused a command (its protocol `code`, e.g. `UNKNOWN_AGENT`, `RATE_LIMITED`; a code this client does not know passes through), or the client did (`CONNECTION_LOST`, `OUTCOME_UNKNOWN`, `MESSAGE_TOO_LARGE`). */
export class AgentwireCommandError extends Data.TaggedError("AgentwireCommandError")<{
  readonly code: string
  readonly message: string
  /** With `RATE_LIMITED` / `SERVER_BUSY`: ms until a retry may succeed. */
  readonly retryAfterMs: number | undefined
}> {}

/** A run's remaining events can no longer be had (server restarted, expired, unknown, or the client closed). */
export class AgentwireRunLost extends Data.TaggedError("AgentwireRunLost")<{
  readonly run_id: string
  readonly reason: RunLostReason
  readonly message: string
  /** Every event up to this `seq` was delivered. */
  readonly lastDeliveredSeq: number
}> {}

/** The client stopped before the command was answered: its scope ended (`client`), the server replaced the connection (`replaced`, 4009), or the token was refused (`auth_failed`). */
export class AgentwireClientClosed extends Data.TaggedError("AgentwireClientClosed")<{
  readonly message: string
  readonly reason: "client" | "replaced" | "auth_failed"
}> {}

/** A followed run: its ids and its events, each once and in `seq` order, ending after the root `agent_completed`. */
export interface RunStream {
  readonly run_id: string
  readonly thread_id: string | undefined
  /** The server answered the start as a repeat of an earlier one (nothing new started). */
  readonly duplicate: boolean
  readonly events: Stream.Stream<AgentEvent, AgentwireRunLost>
}

/** The client's operations as Effects. */
export interface AgentwireClientApi {
  /** The connection state now. */
  readonly state: Effect.Effect<ConnectionState>
  /** Every later state change. */
  readonly states: Stream.Stream<ConnectionState>
  /** Starts a run (the default agent when `agent` is undefined); succeeds at `run_accepted`. */
  readonly start: (
    agent: string | undefined,
    request: string,
    options?: StartOptions
  ) => Effect.Effect<RunStream, AgentwireCommandError | AgentwireClientClosed>
  /** Follows an existing run from `afterSeq` (default 0). */
  readonly follow: (run_id: string, afterSeq?: number) => Effect.Effect<RunStream>
  /** Stops a run: the run ids actually stopped. */
  readonly stop: (run_id: string) => Effect.Effect<ReadonlyArray<string>, AgentwireCommandError | AgentwireClientClosed>
  /** The user's active and retained runs, newest first. */
  readonly listRuns: (options?: ListRunsOptions) => Effect.Effect<ReadonlyArray<RunInfo>, AgentwireCommandError | AgentwireClientClosed>
  /** The promise-based client underneath. */
  readonly unsafeClient: Client
}

export class AgentwireClient extends Context.Service<AgentwireClient, AgentwireClientApi>()("agentwire/client/AgentwireClient") {}

const commandError = (error: unknown): AgentwireCommandError | AgentwireClientClosed =>
  error instanceof CommandError
    ? new AgentwireCommandError({ code: error.code, message: error.message, retryAfterMs: error.retryAfterMs })
    : error instanceof ClientClosedError
    ? new AgentwireClientClosed({ message: error.message, reason: error.reason })
    : new AgentwireCommandError({ code: "INTERNAL", message: error instanceof Error ? error.message : String(error), retryAfterMs: undefined })

const runLost = (run_id: string) => (error: unknown): AgentwireRunLost =>
  error instanceof RunLostError
    ? new AgentwireRunLost({ run_id, reason: error.reason, message: error.message, lastDeliveredSeq: error.lastDeliveredSeq })
    : new AgentwireRunLost({ run_id, reason: "client_closed", message: String(error), lastDeliveredSeq: 0 })

const streamOf = (run: Run): RunStream => ({
  run_id: run.run_id,
  thread_id: run.thread_id,
  duplicate: run.duplicate,
  events: Stream.fromAsyncIterable(run, runLost(run.run_id))
})

/** Opens a client for the life of the scope (closed when the scope closes). */
export const make = (options: ClientOptions): Effect.Effect<AgentwireClientApi, never, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(Effect.sync(() => connect(options)), (client) => Effect.sync(() => client.close())),
    (client): AgentwireClientApi => ({
      state: Effect.sync(() => client.state),
      states: Stream.callback<ConnectionState>((queue) =>
        Effect.acquireRelease(
          Effect.sync(() => client.onState((s) => void Queue.offerUnsafe(queue, s))),
          (unsubscribe) => Effect.sync(unsubscribe)
        )
      ),
      start: Effect.fn("AgentwireClient.start")(function*(agent: string | undefined, request: string, startOptions?: StartOptions) {
        const run = yield* Effect.tryPromise({ try: () => client.start(agent, request, startOptions), catch: commandError })
        yield* Effect.annotateCurrentSpan({ run_id: run.run_id, duplicate: run.duplicate })
        return streamOf(run)
      }),
      follow: (run_id, afterSeq) => Effect.sync(() => streamOf(client.follow(run_id, afterSeq))),
      stop: Effect.fn("AgentwireClient.stop")(function*(run_id: string) {
        return yield* Effect.tryPromise({ try: () => client.stop(run_id), catch: commandError })
      }),
      listRuns: Effect.fn("AgentwireClient.listRuns")(function*(filter?: ListRunsOptions) {
        return yield* Effect.tryPromise({ try: () => client.listRuns(filter), catch: commandError })
      }),
      unsafeClient: client
    })
  )

/** The client as a layer: connected while the layer lives. */
export const layer = (options: ClientOptions): Layer.Layer<AgentwireClient> => Layer.effect(AgentwireClient, make(options))
