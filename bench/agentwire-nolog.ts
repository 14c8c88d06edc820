/**
 * Bench only: agentwire **without its run log**, to measure what logging
 * every event costs (`npm run bench -- --runlog`). Not a product build and not
 * a switch of the service: nothing under `src/` knows about it.
 *
 * The same process as `src/main.ts` (the same config from the environment,
 * logfmt logger, server, auth, engine, admission and in-memory bridge, the
 * built-in agents), with one difference: the `RunLog` is {@link noopRunLog},
 * which stores nothing. Its `appendSync` answers `"ok"`, so the run emitter
 * keeps its synchronous path (stamp, one `JSON.stringify`, append, deliver)
 * and the only work taken away is the log's own: the append and what it
 * retains (and the GC of it). `resume_run` / `list_runs` find nothing here;
 * the bench sends neither.
 *
 * The runtime's composition below mirrors `AgentRuntime.layerWithoutBridge`
 * with the in-memory log swapped out; keep the two in step.
 *
 * @module
 */
import { NodeRuntime } from "@effect/platform-node"
import { Cause, Console, Effect, Exit, Layer, Logger, Option, References } from "effect"
import * as Agentwire from "../src/Agentwire.ts"
import * as AgentInstanceFactoryLayer from "../src/layers/AgentInstanceFactory.ts"
import * as AgentwireConfigLayer from "../src/layers/AgentwireConfig.ts"
import * as AuthJwt from "../src/layers/AuthJwt.ts"
import * as DemoBanner from "../src/layers/DemoBanner.ts"
import * as ExecutionEngineFactoryLayer from "../src/layers/ExecutionEngineFactory.ts"
import * as RunAdmissionMemory from "../src/layers/RunAdmissionMemory.ts"
import * as WebSocketBridgeMemory from "../src/layers/WebSocketBridgeMemory.ts"
import * as Server from "../src/server/Server.ts"
import type { AgentRegistry } from "../src/services/AgentRegistry.ts"
import { AgentwireConfig } from "../src/services/AgentwireConfig.ts"
import { RunLog, RunNotFoundError } from "../src/services/RunLog.ts"
import { generateId } from "../src/services/UserExecutionContext.ts"
import * as History from "../src/layers/History.ts"

/** A `RunLog` that keeps nothing: every append is `"ok"` (synchronously too), every run is unknown. */
export const noopRunLog: Layer.Layer<RunLog> = Layer.effect(
  RunLog,
  Effect.map(
    Effect.serviceOption(AgentwireConfig),
    (config) => {
      const ok = Effect.succeed("ok" as const)
      return RunLog.of({
        epoch: generateId("epoch"),
        settings: Option.match(config, { onNone: () => AgentwireConfigLayer.DEFAULT_RUN_LOG_SETTINGS, onSome: (c) => c.runLog }),
        append: () => ok,
        appendSync: () => "ok",
        release: () => Effect.void,
        summary: (_user_id, run_id) => Effect.fail(new RunNotFoundError({ run_id })),
        list: () => Effect.succeed([]),
        stats: Effect.succeed({ runs: 0, activeRuns: 0, bytes: 0, maxBytes: 0, tombstones: 0, evicted: 0 }),
        read: (_user_id, run_id) => Effect.fail(new RunNotFoundError({ run_id })),
        waitFor: (_user_id, run_id) => Effect.fail(new RunNotFoundError({ run_id }))
      })
    }
  )
)

/** `Agentwire.layerServerWithBanner(registry)` with `noopRunLog` in place of the in-memory log. */
const layerServerWithoutLog = <E, R>(registry: Layer.Layer<AgentRegistry, E, R>) => {
  const runtime = ExecutionEngineFactoryLayer.layer.pipe(
    Layer.provideMerge(AgentInstanceFactoryLayer.layer),
    Layer.provideMerge(RunAdmissionMemory.layerConfig),
    Layer.provideMerge(noopRunLog),
    Layer.provideMerge(WebSocketBridgeMemory.layer)
  )
  const server = Server.layer.pipe(
    Layer.provideMerge(AuthJwt.layer),
    Layer.provideMerge(runtime),
    Layer.provide(registry)
  )
  return DemoBanner.layer.pipe(Layer.provideMerge(server))
}

// the same services as the real server, or this file stops compiling
const _check = <E, R>(registry: Layer.Layer<AgentRegistry, E, R>) => {
  const real: Layer.Layer<Agentwire.ServerServices, unknown, AgentwireConfig | R> = Agentwire.layerServerWithBanner(registry)
  const bench: typeof real = layerServerWithoutLog(registry)
  return [real, bench]
}
void _check

const main = Effect.gen(function*() {
  const settings = yield* AgentwireConfigLayer.fromEnv
  const history = yield* History.settingsFromEnv
  // as Agentwire.layerApp: the built-in agents over durable history, only the run log differs
  const app = layerServerWithoutLog(Agentwire.layerBuiltinRegistryOver(settings)).pipe(
    Layer.provideMerge(History.layer(history)),
    Layer.provide(AgentwireConfigLayer.layer(settings)),
    Layer.provide(Logger.layer([Logger.consoleLogFmt]))
  )
  return yield* Layer.launch(app).pipe(Effect.provideService(References.MinimumLogLevel, settings.logLevel))
}).pipe(
  Effect.tapCause((cause) =>
    Cause.hasInterruptsOnly(cause) ? Effect.void : Console.error(`agentwire (no log, bench): ${Cause.pretty(cause)}`)
  )
)

NodeRuntime.runMain(main, {
  disableErrorReporting: true,
  teardown: (exit, onExit) => onExit(Exit.isSuccess(exit) || Cause.hasInterruptsOnly(exit.cause) ? 0 : 1)
})
