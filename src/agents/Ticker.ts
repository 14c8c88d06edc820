/**
 * `ticker`: sends N `agent_thinking` steps M ms apart.
 *
 * Reads `steps=N interval_ms=M` from the request (defaults 10 and 100; M may
 * be 0). For demos, tests of long runs and benchmarks.
 *
 * @module
 */
import { Effect } from "effect"
import * as Agent from "../services/Agent.ts"

/** Largest `steps` accepted. */
export const MAX_STEPS = 100_000
/** Largest `interval_ms` accepted. */
export const MAX_INTERVAL_MS = 60_000

const readSetting = (request: string, key: string, fallback: number, max: number) => {
  const match = new RegExp(`\\b${key}\\s*=\\s*(\\S+)`).exec(request)
  if (match === null) return Effect.succeed(fallback)
  const value = Number(match[1])
  return Number.isInteger(value) && value >= 0 && value <= max
    ? Effect.succeed(value)
    : Effect.fail(new Agent.AgentError({ code: "INVALID_INPUT", message: `${key} must be an integer from 0 to ${max}, got "${match[1]}"` }))
}

export const ticker = Agent.make("ticker", {
  description: "Sends steps=N agent_thinking events interval_ms=M apart (defaults 10 and 100)",
  run: (request, ctx) =>
    Effect.gen(function*() {
      const steps = yield* readSetting(request, "steps", 10, MAX_STEPS)
      const interval = yield* readSetting(request, "interval_ms", 100, MAX_INTERVAL_MS)
      for (let step = 1; step <= steps; step++) {
        if (step > 1 && interval > 0) yield* Effect.sleep(interval)
        yield* ctx.think(`tick ${step} of ${steps}`, step)
      }
      return `ticked ${steps} times`
    })
})
