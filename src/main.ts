/**
 * Entrypoint: read config, compose layers, run. `npm start` runs this file.
 *
 * Every startup failure (bad config value, missing secret in production, port
 * in use, bad agent registry, a history database that cannot be opened or
 * migrated) prints one line naming the cause and exits 3.
 *
 * @module
 */
import { NodeRuntime } from "@effect/platform-node"
import { Cause, Console, Effect, Exit, Layer, Logger, Option, References } from "effect"
import * as Agentwire from "./Agentwire.ts"
import * as AgentwireConfig from "./layers/AgentwireConfig.ts"
import * as History from "./layers/History.ts"
import * as LogOutput from "./layers/LogOutput.ts"
import { redactTokens } from "./services/Auth.ts"

/** Exit code of a startup failure. */
const STARTUP_FAILURE = 3

const main = Effect.gen(function*() {
  const settings = yield* AgentwireConfig.fromEnv
  const history = yield* History.settingsFromEnv
  const app = Agentwire.layerApp(settings, history).pipe(
    Layer.provide(AgentwireConfig.layer(settings)),
    // one logfmt line per log call: greppable, and never spread over several lines; a turn's lines in one write
    Layer.provide(Logger.layer([LogOutput.logFmt()]))
  )
  return yield* Layer.launch(app).pipe(Effect.provideService(References.MinimumLogLevel, settings.logLevel))
}).pipe(
  Effect.tapCause((cause) => {
    const failure = Cause.findErrorOption(cause)
    if (Option.isSome(failure)) return Console.error(`agentwire: cannot start: ${failure.value.message}`)
    return Cause.hasInterruptsOnly(cause) ? Effect.void : Console.error(`agentwire: crashed\n${redactTokens(Cause.pretty(cause))}`)
  })
)

// a crash outside the runtime still ends the process, but its output never carries a token
process.on("uncaughtException", (error) => {
  process.stderr.write(`agentwire: crashed\n${redactTokens(error instanceof Error ? (error.stack ?? error.message) : String(error))}\n`)
  process.exit(1)
})

NodeRuntime.runMain(main, {
  disableErrorReporting: true,
  teardown: (exit, onExit) =>
    onExit(
      Exit.isSuccess(exit) || Cause.hasInterruptsOnly(exit.cause)
        ? 0
        : Option.isSome(Cause.findErrorOption(exit.cause))
        ? STARTUP_FAILURE
        : 1
    )
})
