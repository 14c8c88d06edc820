/**
 * Embedding agentwire in another Effect program.
 *
 * - `forecaster`: a custom agent that needs its own `Weather` service, thinks,
 *   calls a tool and delegates to the built-in `echo` agent.
 * - `recordRun`: runs one request for a user on a runtime whose bridge records
 *   every event (`WebSocketBridgeRecording`), and returns those events.
 * - `ServerLive`: the same agents served over HTTP + WebSocket on a free port.
 *
 * Run: `npm exec -- node examples/embedding.ts`
 *
 * @module
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Context, Data, Effect, Layer, Option, Redacted, References } from "effect"
import {
  Agent,
  AgentRegistryLayer,
  AgentRuntime,
  Agentwire,
  AgentwireConfigLayer,
  BuiltinAgents,
  ExecutionEngineFactory,
  type Protocol,
  RecordedEvents,
  UserExecutionContext,
  WebSocketBridgeRecording
} from "../src/index.ts"

// 1. A service of your own, and an agent that requires it ---------------------

export class WeatherUnavailable extends Data.TaggedError("WeatherUnavailable")<{ readonly city: string }> {
  override get message(): string {
    return `no forecast for ${this.city}`
  }
}

export class Weather extends Context.Service<Weather, {
  readonly forecast: (city: string) => Effect.Effect<{ readonly celsius: number; readonly sky: string }, WeatherUnavailable>
}>()("example/Weather") {}

/** A fixed table instead of a real weather API. */
export const WeatherLive = Layer.succeed(Weather, {
  forecast: (city) => {
    const known: Record<string, { celsius: number; sky: string }> = {
      lisbon: { celsius: 21, sky: "sunny" },
      oslo: { celsius: -3, sky: "snowing" }
    }
    const found = known[city.toLowerCase()]
    return found === undefined ? Effect.fail(new WeatherUnavailable({ city })) : Effect.succeed(found)
  }
})

/** `Agent<Weather>`: the requirement shows in the type and travels into the registry layer. */
export const forecaster = Agent.make("forecaster", {
  description: "Tells the weather in a city (forecast tool), phrased by the echo agent",
  run: (request, ctx) =>
    Effect.gen(function*() {
      const weather = yield* Weather
      const city = /\bin\s+([A-Za-z]+)/.exec(request)?.[1] ?? "Lisbon"
      yield* ctx.think(`Looking up the forecast for ${city}`, 1)
      // sends tool_executing, then tool_completed with the output or the error
      const today = yield* ctx.tool("forecast", { city }, weather.forecast(city), { timeout: "2 seconds" })
      yield* ctx.think("Handing the answer to echo", 2)
      // runs the built-in echo agent at depth 1 and returns its final response
      return yield* ctx.delegate("echo", `${city}: ${today.celsius}°C, ${today.sky}`)
    })
})

// 2. Registry and runtime -----------------------------------------------------

/** Layer<AgentRegistry, AgentRegistryError, Weather>: the registry needs what its agents need. */
export const registry = AgentRegistryLayer.layer([...BuiltinAgents.builtinAgents, forecaster], {
  defaultAgent: "forecaster"
})

/** Production wiring: engines, instances and the in-memory bridge, with Weather provided. */
export const AppLive = AgentRuntime.layer.pipe(Layer.provide(registry), Layer.provide(WeatherLive))

/** Test wiring: the same runtime over a bridge that records every event. */
export const RecordingLive = AgentRuntime.layerWithoutBridge.pipe(
  Layer.provideMerge(WebSocketBridgeRecording.layer),
  Layer.provide(registry),
  Layer.provide(WeatherLive)
)

// 3. One request for one user ------------------------------------------------

/** Runs `request` for `user_id` on a per-request engine; needs only `ExecutionEngineFactory`. */
export const ask = (user_id: string, request: string, agent = "forecaster") =>
  Effect.gen(function*() {
    const engines = yield* ExecutionEngineFactory
    const context = yield* UserExecutionContext.make({ user_id })
    // the engine holds only this run's state and is released when the scope closes
    const outcome = yield* Effect.scoped(
      Effect.flatMap(engines.createForUser(context), (engine) => engine.run(agent, request))
    )
    return { context, outcome }
  })

/** Runs one request on `RecordingLive` and returns the outcome and the events the bridge recorded. */
export const recordRun = (user_id: string, request: string) =>
  Effect.gen(function*() {
    const { context, outcome } = yield* ask(user_id, request)
    const events = yield* (yield* RecordedEvents).ofRun(context.run_id)
    return { outcome, events }
  }).pipe(Effect.provide(RecordingLive))

/** One line per event: seq, indentation by depth, type, agent and the interesting field. */
export const describeEvent = (e: Protocol.AgentEvent): string => {
  const detail = e.type === "agent_started"
    ? e.task_description
    : e.type === "agent_thinking"
    ? e.reasoning
    : e.type === "tool_executing"
    ? `${e.tool_name} ${JSON.stringify(e.parameters)}`
    : e.type === "tool_completed"
    ? `${e.tool_name} ${JSON.stringify(e.results)}`
    : e.type === "agent_error"
    ? `${e.error.code}: ${e.error.message}`
    : e.type === "partial_result"
    ? `${e.message_id} ${JSON.stringify(e.delta)}`
    : e.type === "agent_stopped"
    ? e.reason
    : `${e.status}: ${e.final_response}`
  return `${String(e.seq).padStart(2)} ${"  ".repeat(e.depth)}${e.type} [${e.agent_name}] ${detail}`
}

/** What `node examples/embedding.ts` runs: one good and one failing request, printed. */
export const main = Effect.gen(function*() {
  for (const request of ["What is the weather in Lisbon?", "And in Atlantis?"]) {
    const { events, outcome } = yield* recordRun("alice", request)
    yield* Console.log(`\n> ${request}`)
    for (const event of events) yield* Console.log(describeEvent(event))
    yield* Console.log(`outcome: ${outcome.status}, "${outcome.final_response}"`)
  }
}).pipe(Effect.provideService(References.MinimumLogLevel, "Warn")) // hide the per-run INFO log lines

// Forgetting a requirement is a compile error, not a runtime surprise:
const withoutWeather = ask("alice", "weather in Oslo").pipe(Effect.provide(AgentRuntime.layer.pipe(Layer.provide(registry))))
// @ts-expect-error -- Type 'Weather' is not assignable to type 'never': the registry still needs it
const runWithoutWeather = () => Effect.runPromise(withoutWeather)
void runWithoutWeather

// 4. The same agents over HTTP + WebSocket -----------------------------------

/** A fixed secret so callers can sign tokens (`Auth.issue`); at least 32 characters. */
const secret = Redacted.make("example-secret-at-least-32-characters!")

/** The server on 127.0.0.1 and a free port; `AgentwireServer` tells the port, `Auth` issues tokens. */
export const ServerLive = Agentwire.layerServer(registry.pipe(Layer.provide(WeatherLive))).pipe(
  Layer.provide(AgentwireConfigLayer.layer({ port: 0, jwtSecret: Option.some(secret) }))
)

if (import.meta.main) {
  NodeRuntime.runMain(main)
}
