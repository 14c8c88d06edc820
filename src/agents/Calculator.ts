/**
 * `calculator`: answers arithmetic through the `calculate` tool.
 *
 * A malformed expression is a failed tool call (`tool_completed` with
 * `success: false`) and a clear answer; the run still completes. So is an
 * expression past the evaluator's limits (nesting deeper than `MAX_NESTING`,
 * longer than `MAX_EXPRESSION_LENGTH`) or with a non-finite result: the
 * calculator never reports `Infinity`, `NaN` or a value computed from them.
 * Grammar, semantics (`-2^2` = -4, `^` right-associative) and bounds are
 * documented in `Arithmetic.ts`; handling any request is linear in its length.
 *
 * @module
 */
import { Effect } from "effect"
import * as Agent from "../services/Agent.ts"
import { evaluate, extractExpression, formatNumber } from "./Arithmetic.ts"

export const calculator = Agent.make("calculator", {
  description: "Evaluates arithmetic such as `what is (2+3)*4.5?` with the calculate tool",
  run: (request, ctx) =>
    Effect.gen(function*() {
      const expression = extractExpression(request)
      if (expression === undefined) {
        yield* ctx.think("No arithmetic expression found in the request")
        return `I could not find an arithmetic expression in "${request}".`
      }
      yield* ctx.think(`Evaluating the expression ${expression}`)
      return yield* ctx.tool("calculate", { expression }, Effect.map(evaluate(expression), formatNumber)).pipe(
        Effect.map((result) => `${expression} = ${result}`),
        Effect.catchTag("ToolError", (error) => Effect.succeed(`I could not calculate ${expression}: ${error.message}.`))
      )
    })
})
