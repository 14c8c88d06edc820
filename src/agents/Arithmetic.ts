/**
 * A small arithmetic evaluator for the `calculator` agent, and the extraction
 * of an expression from a free-text request.
 *
 * **Grammar** (whitespace allowed between tokens):
 * ```
 * sum     := product (("+" | "-") product)*
 * product := unary (("*" | "/" | "%") unary)*
 * unary   := ("+" | "-") unary | power
 * power   := primary ("^" unary)?
 * primary := number | "(" sum ")"
 * number  := digits ["." digits?] | "." digits, then optionally ("e" | "E") ["+" | "-"] digits
 * ```
 * `×` and `÷` are accepted for `*` and `/`, and `−` (U+2212) for `-`.
 *
 * **Semantics** (IEEE-754 doubles):
 * - `^` is right-associative and binds tighter than a sign: `2^3^2` = 512,
 *   `-2^2` = -(2^2) = -4 (conventional mathematics), `(-2)^2` = 4, and an
 *   exponent may carry a sign: `2^-2` = 0.25, `2^-3^2` = 2^(-(3^2)).
 * - `0^0` = 1, as in JavaScript.
 * - `%` is the remainder with the sign of the dividend (JavaScript's `%`):
 *   `-7 % 3` = -1.
 * - `/` or `%` by zero fails with `division by zero`.
 * - Every intermediate result must be finite: `1e308*10`, `0^-1` and
 *   `(-8)^(1/3)` fail with `the result is not a finite number` (never a
 *   silent `Infinity`, `NaN`, or a finite answer computed from them).
 * - A literal too large for a double (`1e400`) or too small to be told apart
 *   from 0 (`1e-400`) fails instead of becoming `Infinity` or `0`.
 *
 * **Bounds.** Parsing is a single left-to-right pass (linear time, no regular
 * expression runs over the input), and recursion is bounded: parentheses,
 * signs and the exponent of `^` may nest at most {@link MAX_NESTING} levels,
 * beyond which evaluation fails with `nesting deeper than 64 levels` rather
 * than exhausting the stack. {@link extractExpression} is linear as well.
 *
 * Errors are typed ({@link ArithmeticError}) and say where the expression went
 * wrong (1-based character positions within the expression).
 *
 * @module
 */
import { Data, Effect } from "effect"

/** The expression could not be evaluated. */
export class ArithmeticError extends Data.TaggedError("ArithmeticError")<{
  readonly expression: string
  readonly message: string
}> {}

/**
 * Deepest nesting {@link evaluate} accepts: each `(`, each sign and each `^`
 * exponent opens one level (`((1))` is 2 levels, `--1` is 2, `2^2^2` is 2).
 */
export const MAX_NESTING = 64

const isDigit = (c: string | undefined): boolean => c !== undefined && c >= "0" && c <= "9"
const isSpace = (c: string | undefined): boolean => {
  if (c === undefined) return false
  const code = c.charCodeAt(0)
  return code === 32 || (code >= 9 && code <= 13) || (code > 127 && /^\s$/.test(c))
}
const isMinus = (c: string | undefined): boolean => c === "-" || c === "−"
const isSign = (c: string | undefined): boolean => c === "+" || isMinus(c)
const isOperator = (c: string | undefined): boolean =>
  c === "+" || c === "-" || c === "−" || c === "*" || c === "/" || c === "%" || c === "^" || c === "×" || c === "÷"
/** A character that continues a word: a number glued to one (`0x10`, `sqrt(`, `5kg`) is not arithmetic. */
const isWordChar = (c: string | undefined): boolean => c !== undefined && /^[\p{L}\p{N}\p{M}_]$/u.test(c)

/** Quotes a piece of input for a message, cut to `max` characters. */
const quote = (text: string, max = 24): string => `"${text.length > max ? `${text.slice(0, max)}…` : text}"`

/**
 * Whether the `e`/`E` at `i` is the exponent mark of a number: it follows a
 * digit (or a `.` after a digit) and precedes digits, optionally signed.
 */
const isExponentMark = (text: string, i: number): boolean => {
  const c = text[i]
  if (c !== "e" && c !== "E") return false
  const before = text[i - 1]
  if (!(isDigit(before) || (before === "." && isDigit(text[i - 2])))) return false
  return isDigit(text[i + 1]) || (isSign(text[i + 1]) && isDigit(text[i + 2]))
}

/** Characters an expression in a request may consist of (`,` so that `1,000` is refused, not read as `000`). */
const isExpressionChar = (text: string, i: number): boolean => {
  const c = text[i]!
  return isDigit(c) || isOperator(c) || c === "(" || c === ")" || c === "." || c === "," || isSpace(c) ||
    isExponentMark(text, i)
}

/**
 * Finds the arithmetic in a request: `what is (2+3)*4.5?` gives `(2+3)*4.5`,
 * `what is 1e3/10?` gives `1e3/10`.
 *
 * Returns the longest run of arithmetic characters (digits, `.`, `,`,
 * operators, parentheses, whitespace, and `e`/`E` only as the exponent mark
 * of a number) that contains a digit, trimmed of whitespace and trailing
 * `.`/`,`. A run glued to a word (`0x10`, `sqrt(16)`, `5kg`, `v2+1`) is not
 * arithmetic and is skipped, so that no part of a word is silently dropped
 * from what gets evaluated. `undefined` when there is none. Linear time.
 */
export const extractExpression = (request: string): string | undefined => {
  let best: string | undefined
  let i = 0
  while (i < request.length) {
    if (!isExpressionChar(request, i)) {
      i++
      continue
    }
    let start = i
    let hasDigit = false
    while (i < request.length && isExpressionChar(request, i)) {
      if (isDigit(request[i])) hasDigit = true
      i++
    }
    let end = i
    if (!hasDigit) continue
    while (start < end && isSpace(request[start])) start++
    while (end > start && isSpace(request[end - 1])) end--
    const glued = isWordChar(request[start - 1]) || isWordChar(request[end])
    while (end > start && (request[end - 1] === "." || request[end - 1] === "," || isSpace(request[end - 1]))) end--
    // only spaces, `.` and `,` were trimmed, so the candidate still holds a digit
    if (!glued && end - start > (best?.length ?? 0)) best = request.slice(start, end)
  }
  return best
}

/**
 * Whether `expression` applies a binary operator: an operand's end (digit,
 * `.`, `)`) followed by an operator and then an operand's start (digit, `.`,
 * `(`, or a sign). `2+3*4` and `1e3/10` do; `42` and `-5` do not. Linear time.
 */
export const hasBinaryOperator = (expression: string): boolean => {
  let previous: string | undefined // last non-space character
  for (let i = 0; i < expression.length; i++) {
    const c = expression[i]!
    if (isSpace(c)) continue
    if (isOperator(c) && (isDigit(previous) || previous === "." || previous === ")")) {
      let j = i + 1
      while (isSpace(expression[j])) j++
      const next = expression[j]
      if (isDigit(next) || next === "." || next === "(" || isSign(next)) return true
    }
    previous = c
  }
  return false
}

/** Internal: aborts the parse with a message. */
class Abort {
  readonly message: string
  constructor(message: string) {
    this.message = message
  }
}

const parse = (source: string): number => {
  let pos = 0
  let depth = 0
  const abort = (message: string): never => {
    throw new Abort(message)
  }
  const at = (i: number) => `at position ${i + 1}`
  const peek = (): string | undefined => {
    while (isSpace(source[pos])) pos++
    return source[pos]
  }
  const enter = () => {
    if (++depth > MAX_NESTING) abort(`nesting deeper than ${MAX_NESTING} levels ${at(pos)}`)
  }
  const finite = (value: number, opIndex: number): number =>
    Number.isFinite(value) ? value : abort(`the result is not a finite number (${at(opIndex)})`)

  const number = (): number => {
    const start = pos
    let mantissaDigits = false
    let nonZero = false
    while (isDigit(source[pos])) {
      mantissaDigits = true
      if (source[pos] !== "0") nonZero = true
      pos++
    }
    if (source[pos] === ".") {
      pos++
      while (isDigit(source[pos])) {
        mantissaDigits = true
        if (source[pos] !== "0") nonZero = true
        pos++
      }
    }
    if (!mantissaDigits) {
      pos = start
      return abort(`unexpected ${quote(source[start] ?? "")} ${at(start)}`)
    }
    let unicodeMinus = false
    if (isExponentMark(source, pos)) {
      pos++
      if (isSign(source[pos])) unicodeMinus = source[pos++] === "−"
      while (isDigit(source[pos])) pos++
    }
    const text = source.slice(start, pos)
    const value = Number(unicodeMinus ? text.replace("−", "-") : text)
    if (!Number.isFinite(value)) abort(`the number ${quote(text)} ${at(start)} is too large`)
    if (value === 0 && nonZero) abort(`the number ${quote(text)} ${at(start)} is too small (it would be rounded to 0)`)
    return value
  }
  const primary = (): number => {
    const c = peek()
    if (c === undefined) return abort("the expression ends too early")
    if (c === "(") {
      const open = pos
      enter()
      pos++
      const value = sum()
      if (peek() !== ")") abort(`missing ")" for the "(" ${at(open)}`)
      pos++
      depth--
      return value
    }
    if (c === "." || isDigit(c)) return number()
    return abort(`unexpected ${quote(c)} ${at(pos)}`)
  }
  const power = (): number => {
    const base = primary()
    if (peek() !== "^") return base
    const op = pos
    enter()
    pos++
    const exponent = unary()
    depth--
    return finite(base ** exponent, op)
  }
  const unary = (): number => {
    const c = peek()
    if (!isSign(c)) return power()
    enter()
    pos++
    const value = unary()
    depth--
    return isMinus(c) ? -value : value
  }
  const product = (): number => {
    let left = unary()
    for (let op = peek(); op === "*" || op === "/" || op === "%" || op === "×" || op === "÷"; op = peek()) {
      const opIndex = pos
      pos++
      const right = unary()
      if ((op === "/" || op === "÷" || op === "%") && right === 0) abort(`division by zero ${at(opIndex)}`)
      left = finite(op === "/" || op === "÷" ? left / right : op === "%" ? left % right : left * right, opIndex)
    }
    return left
  }
  const sum = (): number => {
    let left = product()
    for (let op = peek(); op === "+" || isMinus(op); op = peek()) {
      const opIndex = pos
      pos++
      const right = product()
      left = finite(op === "+" ? left + right : left - right, opIndex)
    }
    return left
  }

  if (peek() === undefined) abort("the expression is empty")
  const result = sum()
  const rest = peek()
  if (rest !== undefined) abort(rest === ")" ? `unmatched ")" ${at(pos)}` : `unexpected ${quote(rest)} ${at(pos)}`)
  return result
}

/**
 * Evaluates `expression` (grammar and semantics in the module docs), failing
 * with an {@link ArithmeticError} whose message says what and where: e.g.
 * `unexpected "*" at position 3`, `division by zero at position 2`,
 * `the result is not a finite number (at position 6)`, `nesting deeper than 64 levels at position 65`.
 * Linear time in the length of `expression`, bounded stack depth.
 */
export const evaluate = (expression: string): Effect.Effect<number, ArithmeticError> =>
  Effect.suspend(() => {
    try {
      return Effect.succeed(parse(expression))
    } catch (error) {
      if (error instanceof Abort) return Effect.fail(new ArithmeticError({ expression, message: error.message }))
      throw error
    }
  })

/** Formats a result without floating-point noise: `0.1+0.2` gives `0.3`. */
export const formatNumber = (value: number): string => String(Number(value.toPrecision(12)))
