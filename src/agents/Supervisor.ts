/**
 * `supervisor` (the default agent) and its `triage` sub-agent.
 *
 * The supervisor asks `triage` (depth 1) which agent fits, delegates to it
 * (depth 1), then reports. Each sub-agent sends its own started/completed pair.
 *
 * @module
 */
import { Effect } from "effect"
import * as Agent from "../services/Agent.ts"
import { extractExpression, hasBinaryOperator } from "./Arithmetic.ts"

/**
 * Picks `calculator` when the request holds arithmetic with a binary operator
 * (`what is 2+3*4`, `1e3/10`), else `echo` (`hello`, `call me at 5`). Linear
 * time in the request's length.
 */
export const triage = Agent.make("triage", {
  description: "Decides which agent should handle a request (calculator or echo)",
  run: (request, ctx) =>
    ctx.tool("classify", { request }, Effect.sync(() => {
      const expression = extractExpression(request)
      return expression !== undefined && hasBinaryOperator(expression) ? "calculator" : "echo"
    }))
})

export const supervisor = Agent.make("supervisor", {
  description: "Default agent: triages the request, delegates to calculator or echo, then reports",
  run: (request, ctx) =>
    Effect.gen(function*() {
      yield* ctx.think("Asking triage which agent fits the request", 1)
      const choice = yield* ctx.delegate("triage", request)
      yield* ctx.think(`Delegating to ${choice}`, 2)
      const answer = yield* ctx.delegate(choice, request)
      yield* ctx.think("Reporting the answer", 3)
      return `${choice}: ${answer}`
    })
})
