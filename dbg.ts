import { Effect, Layer } from "effect"
import * as AgentRuntime from "./src/layers/AgentRuntime.ts"
import * as BuiltinAgents from "./src/agents/BuiltinAgents.ts"
import * as AgentwireConfig from "./src/layers/AgentwireConfig.ts"
import { ExecutionEngineFactory } from "./src/services/ExecutionEngineFactory.ts"
import { RunLog } from "./src/services/RunLog.ts"
import * as UserExecutionContext from "./src/services/UserExecutionContext.ts"
const layer = AgentRuntime.layer.pipe(Layer.provide(BuiltinAgents.layer), Layer.provide(AgentwireConfig.layer({ runLog: { ...AgentwireConfig.DEFAULT_RUN_LOG_SETTINGS, maxEventsPerRun: 200 } })))
const prog = Effect.gen(function*() {
  const engines = yield* ExecutionEngineFactory
  const log = yield* RunLog
  const context = yield* UserExecutionContext.make({ user_id: "u" })
  const h = yield* engines.start(context, "ticker", "steps=1000 interval_ms=0")
  const o = yield* h.await
  console.log(o)
  const s = yield* log.summary("u", h.run_id)
  console.log(s)
})
Effect.runPromise(prog.pipe(Effect.provide(layer))).catch(e => console.error(e))
