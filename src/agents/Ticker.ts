/**
 * `ticker`: sends N `agent_thinking` steps M ms apart.
 *
 * Reads `steps=N interval_ms=M` from the request (defaults 10 and 100; M may
 * be 0; spaces around `=` allowed). For demos, tests of long runs and
 * benchmarks.
 *
 * Values are plain decimal integers (`0x10`, `1e3`, `+5`, `2.0` are refused)
 * within {@link MAX_STEPS} and {@link MAX_INTERVAL_MS}, each key at most once,
 * and one run may last at most {@link MAX_DURATION_MS}: the `steps − 1`
 * pauses of `interval_ms` must add up to no more, so that one request cannot
 * occupy the server for days (`steps=100000 interval_ms=0` stays allowed for
 * load tests). A bad request fails the run with `AgentError` code
 * `INVALID_INPUT` naming the key and the value (cut to 32 characters). The
 * request is read in one linear pass.
 *
 * @module
 */
import { Duration, Effect } from "effect"
import * as Agent from "../services/Agent.ts"

/** Largest `steps` accepted. */
export const MAX_STEPS = 100_000
/** Largest `interval_ms` accepted. */
export const MAX_INTERVAL_MS = 60_000
/** Longest run accepted: `(steps − 1) × interval_ms` may not exceed it (10 minutes). */
export const MAX_DURATION_MS = 600_000

const MAX_SHOWN = 32

const invalid = (message: string) => new Agent.AgentError({ code: "INVALID_INPUT", message })
const shown = (value: string) => `"${value.length > MAX_SHOWN ? `${value.slice(0, MAX_SHOWN)}…` : value}"`
const isSpace = (c: string | undefined) => c !== undefined && /^\s$/.test(c)
const isWordChar = (c: string | undefined) => c !== undefined && /^\w$/.test(c)
const isDigits = (value: string) => {
  for (let i = 0; i < value.length; i++) if (value[i]! < "0" || value[i]! > "9") return false
  return value.length > 0
}

/** The raw values of `key=value` in `request` (key as a whole word), in order. One linear pass. */
const valuesOf = (request: string, key: string): Array<string> => {
  const values: Array<string> = []
  let from = 0
  for (let at = request.indexOf(key); at !== -1; at = request.indexOf(key, from)) {
    from = at + key.length
    if (isWordChar(request[at - 1])) continue
    let i = from
    while (isSpace(request[i])) i++
    if (request[i] !== "=") continue
    i++
    while (isSpace(request[i])) i++
    const start = i
    while (i < request.length && !isSpace(request[i])) i++
    values.push(request.slice(start, i))
    from = i // a value is never searched again
  }
  return values
}

const readSetting = (request: string, key: string, fallback: number, max: number): Effect.Effect<number, Agent.AgentError> => {
  const values = valuesOf(request, key)
  if (values.length === 0) return Effect.succeed(fallback)
  if (values.length > 1) return Effect.fail(invalid(`${key} is given ${values.length} times; give it once`))
  const raw = values[0]!
  const value = isDigits(raw) ? Number(raw) : Number.NaN
  return value <= max
    ? Effect.succeed(value)
    : Effect.fail(invalid(`${key} must be a whole number from 0 to ${max} in decimal digits, got ${shown(raw)}`))
}

export const ticker = Agent.make("ticker", {
  description: "Sends steps=N agent_thinking events interval_ms=M apart (defaults 10 and 100; at most 10 minutes in all)",
  run: (request, ctx) =>
    Effect.gen(function*() {
      const steps = yield* readSetting(request, "steps", 10, MAX_STEPS)
      const interval = yield* readSetting(request, "interval_ms", 100, MAX_INTERVAL_MS)
      const duration = Math.max(0, steps - 1) * interval
      if (duration > MAX_DURATION_MS) {
        return yield* Effect.fail(invalid(
          `steps=${steps} interval_ms=${interval} would run for ${duration} ms; a ticker may run at most ${MAX_DURATION_MS} ms ((steps - 1) × interval_ms)`
        ))
      }
      // one Duration and one sleep effect for the whole run, not one per step
      const pause = Effect.sleep(Duration.millis(interval))
      for (let step = 1; step <= steps; step++) {
        if (step > 1 && interval > 0) yield* pause
        yield* ctx.think(`tick ${step} of ${steps}`, step)
      }
      return `ticked ${steps} times`
    })
})
