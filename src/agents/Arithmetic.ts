/**
 * A small arithmetic evaluator for the `calculator` agent.
 *
 * Grammar: numbers (`4.5`, `1e3`), `+ - * / % ^` (power is right-associative),
 * unary minus, parentheses. `×` and `÷` are accepted. Errors are typed and say
 * where the expression went wrong.
 *
 * @module
 */
import { Data, Effect } from "effect"

/** The expression could not be evaluated. */
export class ArithmeticError extends Data.TaggedError("ArithmeticError")<{
  readonly expression: string
  readonly message: string
}> {}

const EXPRESSION_CHARS = /[0-9+\-*/%^().,\s×÷]+/g

/**
 * Finds the arithmetic in a request: `what is (2+3)*4.5?` gives `(2+3)*4.5`.
 * Returns the longest run of arithmetic characters that contains a digit.
 */
export const extractExpression = (request: string): string | undefined => {
  let best: string | undefined
  for (const match of request.matchAll(EXPRESSION_CHARS)) {
    const candidate = match[0].trim().replace(/[.,]+$/, "").trim()
    if (/\d/.test(candidate) && (best === undefined || candidate.length > best.length)) best = candidate
  }
  return best
}

/** Evaluates `expression`, failing with a clear message on malformed input. */
export const evaluate = (expression: string): Effect.Effect<number, ArithmeticError> =>
  Effect.suspend(() => {
    const source = expression.replaceAll("×", "*").replaceAll("÷", "/")
    let pos = 0
    const fail = (message: string) => new ArithmeticError({ expression, message })

    const skip = () => {
      while (pos < source.length && /\s/.test(source[pos]!)) pos++
    }
    const peek = () => {
      skip()
      return source[pos]
    }

    // Recursive descent; each function returns a number or an ArithmeticError.
    const primary = (): number | ArithmeticError => {
      const c = peek()
      if (c === undefined) return fail("the expression ends too early")
      if (c === "(") {
        pos++
        const value = sum()
        if (value instanceof ArithmeticError) return value
        if (peek() !== ")") return fail(`missing ")" at position ${pos + 1}`)
        pos++
        return value
      }
      if (c === "-" || c === "+") {
        pos++
        const value = power()
        if (value instanceof ArithmeticError) return value
        return c === "-" ? -value : value
      }
      const match = /^(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/.exec(source.slice(pos))
      if (match === null) return fail(`unexpected "${c}" at position ${pos + 1}`)
      pos += match[0].length
      return Number(match[0])
    }
    const power = (): number | ArithmeticError => {
      const base = primary()
      if (base instanceof ArithmeticError) return base
      if (peek() !== "^") return base
      pos++
      const exponent = power()
      if (exponent instanceof ArithmeticError) return exponent
      return base ** exponent
    }
    const product = (): number | ArithmeticError => {
      let left = power()
      if (left instanceof ArithmeticError) return left
      for (let op = peek(); op === "*" || op === "/" || op === "%"; op = peek()) {
        pos++
        const right = power()
        if (right instanceof ArithmeticError) return right
        if ((op === "/" || op === "%") && right === 0) return fail("division by zero")
        left = op === "*" ? left * right : op === "/" ? left / right : left % right
      }
      return left
    }
    const sum = (): number | ArithmeticError => {
      let left = product()
      if (left instanceof ArithmeticError) return left
      for (let op = peek(); op === "+" || op === "-"; op = peek()) {
        pos++
        const right = product()
        if (right instanceof ArithmeticError) return right
        left = op === "+" ? left + right : left - right
      }
      return left
    }

    if (source.trim().length === 0) return Effect.fail(fail("the expression is empty"))
    const result = sum()
    if (result instanceof ArithmeticError) return Effect.fail(result)
    if (peek() !== undefined) return Effect.fail(fail(`unexpected "${source[pos]}" at position ${pos + 1}`))
    if (!Number.isFinite(result)) return Effect.fail(fail("the result is not a finite number"))
    return Effect.succeed(result)
  })

/** Formats a result without floating-point noise: `0.1+0.2` gives `0.3`. */
export const formatNumber = (value: number): string => String(Number(value.toPrecision(12)))
