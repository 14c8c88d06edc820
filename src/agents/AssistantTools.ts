/**
 * The `assistant`'s built-in tools, as an effect/ai `Toolkit`:
 *
 * - `calculate {expression}`: arithmetic with the calculator's evaluator
 *   (`+ - * / % ^`, parentheses); a malformed expression is a failed call
 *   whose error text the model sees;
 * - `current_time {time_zone?}`: the current date and time, ISO 8601 UTC plus
 *   the wall-clock time in an IANA zone (default `UTC`).
 *
 * Embedders build their own toolkit the same way (`Tool.make` with Schema
 * parameters, `Toolkit.make`, `toolkit.toLayer(handlers)`) and pass it to
 * `Assistant.make`.
 *
 * @module
 */
import { Effect, Schema } from "effect"
import { Tool, Toolkit } from "effect/ai"
import { evaluate, formatNumber } from "./Arithmetic.ts"

export const Calculate = Tool.make("calculate", {
  description: "Evaluates an arithmetic expression with + - * / % ^ and parentheses, e.g. (2+3)*4.5. Returns the result as a string.",
  parameters: Schema.Struct({ expression: Schema.String.annotate({ description: "the expression, e.g. 2^10/4" }) }),
  success: Schema.String,
  failure: Schema.String
})

export const CurrentTime = Tool.make("current_time", {
  description: "The current date and time. Optional IANA time zone such as Europe/Lisbon (default UTC).",
  parameters: Schema.Struct({ time_zone: Schema.optionalKey(Schema.String) }),
  success: Schema.Struct({ iso: Schema.String, time_zone: Schema.String, local: Schema.String }),
  failure: Schema.String
})

/** `calculate` and `current_time`. */
export const BuiltinToolkit = Toolkit.make(Calculate, CurrentTime)

/** Formats `now` in `time_zone`, failing with a clear message for an unknown zone. */
export const timeIn = (now: Date, time_zone: string): Effect.Effect<{ iso: string; time_zone: string; local: string }, string> =>
  Effect.try({
    try: () => ({
      iso: now.toISOString(),
      time_zone,
      local: new Intl.DateTimeFormat("en-GB", { timeZone: time_zone, dateStyle: "full", timeStyle: "long" }).format(now)
    }),
    catch: () => `unknown time zone "${time_zone.slice(0, 64)}" (use an IANA name such as Europe/Lisbon)`
  })

/** Handlers of the built-in tools. */
export const BuiltinToolkitLayer = BuiltinToolkit.toLayer({
  calculate: ({ expression }) =>
    evaluate(expression).pipe(
      Effect.map(formatNumber),
      Effect.mapError((error) => error.message)
    ),
  current_time: ({ time_zone }) => Effect.flatMap(Effect.sync(() => new Date()), (now) => timeIn(now, time_zone ?? "UTC"))
})
