/**
 * `RunControl` for one process: no run executes anywhere else, so nothing is
 * remote and there is nothing to serve.
 *
 * @module
 */
import { Effect, Layer } from "effect"
import { RunControl } from "../services/RunControl.ts"

/** The no-op run control. No requirements. */
export const layer: Layer.Layer<RunControl> = Layer.succeed(RunControl, RunControl.of({
  remoteRuns: () => Effect.succeed([]),
  stopRemote: () => Effect.succeed([]),
  serve: () => Effect.void
}))
