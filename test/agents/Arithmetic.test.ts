import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Schema } from "effect"
import * as fc from "fast-check"
import {
  evaluate,
  extractExpression,
  formatNumber,
  hasBinaryOperator,
  MAX_EXPRESSION_LENGTH,
  MAX_NESTING
} from "../../src/agents/Arithmetic.ts"

/** `{ ok: value }` or `{ error: message }`, run synchronously. */
const run = (expression: string): { readonly ok: number } | { readonly error: string } => {
  const exit = Effect.runSyncExit(evaluate(expression))
  if (Exit.isSuccess(exit)) return { ok: exit.value }
  const failure = exit.cause.reasons.find((r) => r._tag === "Fail")
  if (failure === undefined || failure._tag !== "Fail") throw new Error(`evaluate died on ${JSON.stringify(expression.slice(0, 80))}`)
  return { error: failure.error.message }
}
/** What the calculator would do with a request: extract, then evaluate. */
const answer = (request: string) => {
  const expression = extractExpression(request)
  return expression === undefined ? { none: true as const } : { expression, ...run(expression) }
}

describe("extractExpression", () => {
  it("keeps exponent notation (fault: 1e308*10 answered 308*10, 1e3/10 answered 3/10, 1E2 answered 1)", () => {
    expect(extractExpression("1e308*10")).toBe("1e308*10")
    expect(extractExpression("what is 1e3/10?")).toBe("1e3/10")
    expect(extractExpression("1E2")).toBe("1E2")
    expect(extractExpression("what is 2.5E-2 + 1.e2 - .5e+1?")).toBe("2.5E-2 + 1.e2 - .5e+1")
  })

  it("does not take an e of an ordinary word into the expression", () => {
    expect(extractExpression("the 2+3 here")).toBe("2+3")
    expect(extractExpression("compute e 2+3 e")).toBe("2+3")
    expect(extractExpression("please evaluate the expression 7*6, thanks")).toBe("7*6")
    expect(extractExpression("hello")).toBeUndefined()
    expect(extractExpression("eee e3 E")).toBeUndefined()
  })

  it("skips numbers glued to a word instead of dropping the word's part (0x10, sqrt(16), 5kg)", () => {
    expect(extractExpression("0x10+1")).toBeUndefined() // was "10+1 = 11"
    expect(extractExpression("sqrt(16)+1")).toBeUndefined() // was "(16)+1 = 17"
    expect(extractExpression("what is 2+2e")).toBeUndefined()
    expect(extractExpression("Q3 sales: 5*4")).toBe("5*4")
  })

  it("keeps commas so that 1,000 is refused rather than read as 000", () => {
    expect(answer("what is 1,000+2?")).toEqual({ expression: "1,000+2", error: "unexpected \",\" at position 2" })
  })

  it("trims whitespace and trailing . and ,", () => {
    expect(extractExpression("what is (2+3)*4.5?")).toBe("(2+3)*4.5")
    expect(extractExpression("what is 2+3.")).toBe("2+3")
    expect(extractExpression("  2 + 3 ,.,. ")).toBe("2 + 3")
  })
})

describe("evaluate", () => {
  it("answers exponent forms correctly, and overflow is a clear failure", () => {
    expect(answer("1e308*10")).toEqual({ expression: "1e308*10", error: "the result is not a finite number (at position 6)" })
    expect(answer("what is 1e3/10?")).toEqual({ expression: "1e3/10", ok: 100 })
    expect(answer("1E2")).toEqual({ expression: "1E2", ok: 100 })
    expect(run("1e3/2.5E-2")).toEqual({ ok: 40000 })
    expect(run("2 − 3")).toEqual({ ok: -1 })
    expect(answer("what is 5 − 3?")).toEqual({ expression: "5 − 3", ok: 2 }) // was "5 = 5"
    expect(run("3 × 4 ÷ 2")).toEqual({ ok: 6 })
  })

  it("semantics: -2^2 = -4, ^ right-associative and tighter than a sign, % keeps the dividend's sign", () => {
    expect(run("-2^2")).toEqual({ ok: -4 })
    expect(run("(-2)^2")).toEqual({ ok: 4 })
    expect(run("2^3^2")).toEqual({ ok: 512 })
    expect(run("2^-2")).toEqual({ ok: 0.25 })
    expect(run("2^-3^2")).toEqual({ ok: 2 ** -9 })
    expect(run("-7%3")).toEqual({ ok: -1 })
    expect(run("7%-3")).toEqual({ ok: 1 })
    expect(run("2+3*4")).toEqual({ ok: 14 })
    expect(run("2*-3")).toEqual({ ok: -6 })
    expect(run("1--1")).toEqual({ ok: 2 })
    expect(run("0^0")).toEqual({ ok: 1 })
  })

  it("non-finite results and out-of-range numbers are failures, never answers", () => {
    expect(run("1/(1e308*10)")).toEqual({ error: "the result is not a finite number (at position 9)" })
    expect(run("1e308*10-1e308*10")).toEqual({ error: "the result is not a finite number (at position 6)" })
    expect(run("0^-1")).toEqual({ error: "the result is not a finite number (at position 2)" })
    expect(run("(-8)^(1/3)")).toEqual({ error: "the result is not a finite number (at position 5)" })
    expect(run("1/0")).toEqual({ error: "division by zero at position 2" })
    expect(run("5 % (1-1)")).toEqual({ error: "division by zero at position 3" })
    expect(run("1e400")).toEqual({ error: "the number \"1e400\" at position 1 is too large" })
    expect(run("1e-400")).toEqual({ error: "the number \"1e-400\" at position 1 is too small (it would be rounded to 0)" })
    expect(run("0e-400")).toEqual({ ok: 0 })
    expect(run("5e-324")).toEqual({ ok: 5e-324 })
  })

  it("malformed input gets a message saying what and where", () => {
    expect(run("2+*3")).toEqual({ error: "unexpected \"*\" at position 3" })
    expect(run("(1+2")).toEqual({ error: "missing \")\" for the \"(\" at position 1" })
    expect(run("1+2)")).toEqual({ error: "unmatched \")\" at position 4" })
    expect(run("1 2")).toEqual({ error: "unexpected \"2\" at position 3" })
    expect(run("2+")).toEqual({ error: "the expression ends too early" })
    expect(run("   ")).toEqual({ error: "the expression is empty" })
    expect(run("1e")).toEqual({ error: "unexpected \"e\" at position 2" })
    expect(run("abc")).toEqual({ error: "unexpected \"a\" at position 1" })
  })

  it(`nesting is bounded at ${MAX_NESTING} levels (fault: 30,000 parentheses crashed the tool with a stack overflow)`, () => {
    const nested = (n: number) => "(".repeat(n) + "1" + ")".repeat(n)
    expect(run(nested(MAX_NESTING))).toEqual({ ok: 1 })
    expect(run(nested(MAX_NESTING + 1))).toEqual({ error: `nesting deeper than ${MAX_NESTING} levels at position ${MAX_NESTING + 1}` })
    expect(run(nested(2_000))).toEqual({ error: `nesting deeper than ${MAX_NESTING} levels at position ${MAX_NESTING + 1}` })
    expect(run("-".repeat(4_000) + "1")).toEqual({ error: `nesting deeper than ${MAX_NESTING} levels at position ${MAX_NESTING + 1}` })
    expect(run("2^".repeat(2_000) + "1")).toEqual({ error: `nesting deeper than ${MAX_NESTING} levels at position ${2 * MAX_NESTING + 2}` })
    expect(run(nested(30_000))).toEqual({ error: `the expression is longer than ${MAX_EXPRESSION_LENGTH} characters` })
    expect(run("-".repeat(MAX_NESTING) + "1")).toEqual({ ok: 1 })
  })
})

describe("adversarial requests: linear by construction, a clear answer each", () => {
  const N = 64 * 1024
  const M = MAX_EXPRESSION_LENGTH
  const fill = (unit: string, length: number) => unit.repeat(Math.ceil(length / unit.length)).slice(0, length)
  type Answer = ReturnType<typeof answer>
  /** Each pattern at length n, and what extraction plus evaluation must give when the expression fits the length cap. */
  const patterns: ReadonlyArray<readonly [string, (n: number) => string, (n: number) => Answer]> = [
    ["dots between digits (fault: 4.5-6 s)", (n) => "1" + ".".repeat(n - 3) + " 1", (n) => ({ expression: "1" + ".".repeat(n - 3) + " 1", error: "unexpected \".\" at position 3" })],
    ["commas between digits", (n) => "1" + ",".repeat(n - 3) + " 1", (n) => ({ expression: "1" + ",".repeat(n - 3) + " 1", error: "unexpected \",\" at position 2" })],
    ["trailing dots", (n) => "1" + ".".repeat(n - 1), () => ({ expression: "1", ok: 1 })],
    ["dot-space", (n) => "1" + fill(". ", n - 3) + " 1", (n) => ({ expression: "1" + fill(". ", n - 3) + " 1", error: "unexpected \".\" at position 4" })],
    ["digits", (n) => "9".repeat(n), (n) => ({ expression: "9".repeat(n), error: "the number \"999999999999999999999999…\" at position 1 is too large" })],
    ["open parens", (n) => "(".repeat(n - 1) + "1", (n) => ({ expression: "(".repeat(n - 1) + "1", error: `nesting deeper than ${MAX_NESTING} levels at position ${MAX_NESTING + 1}` })],
    ["balanced parens", (n) => "(".repeat(n / 2 - 1) + "11" + ")".repeat(n / 2 - 1), (n) => ({ expression: "(".repeat(n / 2 - 1) + "11" + ")".repeat(n / 2 - 1), error: `nesting deeper than ${MAX_NESTING} levels at position ${MAX_NESTING + 1}` })],
    ["signs", (n) => "-".repeat(n - 1) + "1", (n) => ({ expression: "-".repeat(n - 1) + "1", error: `nesting deeper than ${MAX_NESTING} levels at position ${MAX_NESTING + 1}` })],
    ["2^2^…", (n) => fill("2^", n - 2) + "1", (n) => ({ expression: fill("2^", n - 2) + "1", error: `nesting deeper than ${MAX_NESTING} levels at position ${2 * MAX_NESTING + 2}` })],
    ["1+1+…", (n) => fill("1+", n - 2) + "1", (n) => ({ expression: fill("1+", n - 2) + "1", ok: n / 2 })],
    ["1e1e1e… (glued to the last e)", (n) => fill("1e", n), () => ({ none: true })],
    ["1e1e1e…1", (n) => fill("1e", n - 1), (n) => ({ expression: fill("1e", n - 1), error: "unexpected \"e\" at position 4" })],
    ["e1e1e1…", (n) => fill("e1", n), () => ({ none: true })],
    ["1e+1e+…", (n) => fill("1e+", n), (n) => ({ expression: fill("1e+", n), error: "unexpected \"e\" at position 5" })],
    ["words with e", (n) => fill("the eee ", n - 8) + " 2^10", () => ({ expression: "2^10", ok: 1024 })],
    ["digit then spaces", (n) => "1" + " ".repeat(n - 2) + "+", (n) => ({ expression: "1" + " ".repeat(n - 2) + "+", error: "the expression ends too early" })],
    ["(1)*(1)*…", (n) => fill("(1)*", n - 4) + "(1)", (n) => ({ expression: fill("(1)*", n - 4) + "(1)", ok: 1 })],
    ["(1)*(1)*…( unbalanced", (n) => fill("(1)*", n - 3) + "(1)", (n) => ({ expression: fill("(1)*", n - 3) + "(1)", error: `missing ")" for the "(" at position ${n - 3}` })]
  ]
  /** Long strings shown by length and ends, so that a failure stays readable. */
  const short = (a: Answer) =>
    "expression" in a ? { ...a, expression: `${a.expression.length}:${a.expression.slice(0, 12)}…${a.expression.slice(-12)}` } : a
  const capped = (a: Answer): Answer =>
    "expression" in a && a.expression.length > M
      ? { expression: a.expression, error: `the expression is longer than ${M} characters` }
      : a
  for (const [name, make, expected] of patterns) {
    it(`${name}: 64 KiB request, and an expression of the longest length evaluated`, () => {
      for (const n of [N, M]) expect(make(n).length).toSatisfy((l: number) => l > n - 8 && l <= n)
      expect(short(answer(make(N)))).toEqual(short(capped(expected(N))))
      expect(short(answer(make(M)))).toEqual(short(expected(M)))
    })
  }
  it(`an expression one character over ${M} is refused with a clear message`, () => {
    expect(run(fill("1+", M - 2) + "1")).toEqual({ ok: M / 2 })
    expect(run(fill("1+", M) + "1")).toEqual({ error: `the expression is longer than ${M} characters` })
  })
})

// ---------------------------------------------------------------------------
// Property test: the calculator against an independent evaluation of generated
// expression trees. A tree is decoded from an array of random choices (so that
// shrinking the array shrinks the expression), rendered to text with minimal
// (plus some redundant) parentheses and random spacing, then evaluated both by
// `evaluate` and directly from the tree.

type Tree =
  | { readonly kind: "num"; readonly text: string }
  | { readonly kind: "neg" | "pos"; readonly operand: Tree }
  | { readonly kind: "bin"; readonly op: "+" | "-" | "*" | "/" | "%" | "^"; readonly left: Tree; readonly right: Tree }

const decode = (choices: ReadonlyArray<number>): Tree => {
  let cursor = 0
  // cycles through the choices (the tree's depth is bounded, so this ends)
  const next = (n: number) => (choices[cursor++ % Math.max(1, choices.length)] ?? 0) % n
  const digits = (max: number) => String(next(max))
  const literal = (): Tree => {
    const int = digits(next(3) === 0 ? 100_000 : 20)
    const frac = digits(1000)
    const exponent = () => `${next(2) === 0 ? "e" : "E"}${["", "+", "-", "−"][next(4)]}${next(8) === 0 ? digits(330) : digits(25)}`
    switch (next(7)) {
      case 0:
        return { kind: "num", text: `${int}.${frac}` }
      case 1:
        return { kind: "num", text: `.${frac}` }
      case 2:
        return { kind: "num", text: `${int}.` }
      case 3:
        return { kind: "num", text: `${int}${exponent()}` }
      case 4:
        return { kind: "num", text: `${int}.${frac}${exponent()}` }
      default:
        return { kind: "num", text: int }
    }
  }
  const tree = (depth: number): Tree => {
    const pick = depth >= 5 ? 0 : next(7)
    if (pick <= 1) return literal()
    if (pick === 2) return { kind: next(4) === 0 ? "pos" : "neg", operand: tree(depth + 1) }
    const op = (["+", "-", "*", "/", "%", "^"] as const)[next(6)]!
    return { kind: "bin", op, left: tree(depth + 1), right: tree(depth + 1) }
  }
  return tree(0)
}

/** The independent evaluation: straight from the tree, left operand first. */
type Outcome = { readonly ok: number } | { readonly fails: "division by zero" | "not finite" | "number out of range" }
const oracle = (t: Tree): Outcome => {
  switch (t.kind) {
    case "num": {
      const value = Number(t.text.replace("−", "-"))
      const mantissa = t.text.split(/[eE]/)[0]!
      return !Number.isFinite(value) || (value === 0 && /[1-9]/.test(mantissa)) ? { fails: "number out of range" } : { ok: value }
    }
    case "pos":
    case "neg": {
      const v = oracle(t.operand)
      return "fails" in v ? v : { ok: t.kind === "neg" ? -v.ok : v.ok }
    }
    case "bin": {
      const l = oracle(t.left)
      if ("fails" in l) return l
      const r = oracle(t.right)
      if ("fails" in r) return r
      if ((t.op === "/" || t.op === "%") && r.ok === 0) return { fails: "division by zero" }
      const value = t.op === "+" ? l.ok + r.ok
        : t.op === "-" ? l.ok - r.ok
        : t.op === "*" ? l.ok * r.ok
        : t.op === "/" ? l.ok / r.ok
        : t.op === "%" ? l.ok % r.ok
        : Math.pow(l.ok, r.ok)
      return Number.isFinite(value) ? { ok: value } : { fails: "not finite" }
    }
  }
}

/** Binding strength: sum 1, product 2, sign 3, power 4, number 5. */
const strength = (t: Tree): number =>
  t.kind === "num" ? 5 : t.kind !== "bin" ? 3 : t.op === "^" ? 4 : t.op === "+" || t.op === "-" ? 1 : 2

const render = (t: Tree, choices: ReadonlyArray<number>): string => {
  let cursor = 0
  const next = (n: number) => (choices[cursor++ % Math.max(1, choices.length)] ?? 0) % n
  const space = () => [" ", "", "", "  ", "\t"][next(5)]!
  const wrap = (s: string, needed: boolean) => (needed || next(12) === 0 ? `(${space()}${s}${space()})` : s)
  const go = (t: Tree): string => {
    switch (t.kind) {
      case "num":
        return t.text
      case "pos":
      case "neg":
        return `${t.kind === "pos" ? "+" : next(3) === 0 ? "−" : "-"}${space()}${wrap(go(t.operand), strength(t.operand) < 3)}`
      case "bin": {
        const s = strength(t)
        const op = t.op === "*" && next(3) === 0 ? "×" : t.op === "/" && next(3) === 0 ? "÷" : t.op === "-" && next(4) === 0 ? "−" : t.op
        const left = wrap(go(t.left), t.op === "^" ? strength(t.left) <= 4 : strength(t.left) < s)
        const right = wrap(go(t.right), t.op === "^" ? strength(t.right) < 3 : strength(t.right) <= s)
        return `${left}${space()}${op}${space()}${right}`
      }
    }
  }
  return go(t)
}

const category = (message: string) =>
  message.startsWith("division by zero") ? "division by zero"
  : message.startsWith("the result is not a finite number") ? "not finite"
  : message.startsWith("the number") ? "number out of range"
  : `unexpected failure: ${message}`

const hasBinary = (t: Tree): boolean =>
  t.kind === "bin" || (t.kind !== "num" && hasBinary(t.operand))

const Choices = Schema.Array(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 1_000_000 })))

describe("calculator against an independent evaluation (property)", () => {
  const check = (tree: Tree, text: string) => {
    const expected = oracle(tree)
    const actual = run(text)
    if ("ok" in expected) {
      expect(actual, text).toEqual({ ok: expected.ok })
    } else {
      expect("error" in actual && category(actual.error), text).toBe(expected.fails)
    }
    // the same through a request: extraction keeps the whole expression
    const request = `what is ${text}?`
    const extracted = extractExpression(request)
    expect(extracted, text).toBe(text.trim().replace(/[.,\s]+$/, ""))
    expect(run(extracted!), text).toEqual(actual)
    // triage sends it to the calculator exactly when a binary operator is applied
    expect(hasBinaryOperator(extracted!), text).toBe(hasBinary(tree))
  }

  it.prop("generated expressions", { choices: Choices, layout: Choices }, ({ choices, layout }) => {
    const tree = decode(choices)
    check(tree, render(tree, layout))
  }, { arbitrary: { runs: 3000, size: 60 } })

  it("regression cases", () => {
    const cases: ReadonlyArray<readonly [Tree, string]> = [
      [{ kind: "neg", operand: { kind: "bin", op: "^", left: { kind: "num", text: "2" }, right: { kind: "num", text: "2" } } }, "-2^2"],
      [{ kind: "bin", op: "^", left: { kind: "neg", operand: { kind: "num", text: "2" } }, right: { kind: "num", text: "2" } }, "(-2)^2"],
      [{ kind: "bin", op: "/", left: { kind: "num", text: "1e3" }, right: { kind: "num", text: "2.5E-2" } }, "1e3/2.5E-2"],
      [{ kind: "bin", op: "*", left: { kind: "num", text: "1e308" }, right: { kind: "num", text: "10" } }, "1e308*10"]
    ]
    for (const [tree, text] of cases) check(tree, text)
  })
})

describe("formatNumber", () => {
  it("removes floating-point noise", () => {
    expect(formatNumber(0.1 + 0.2)).toBe("0.3")
    expect(formatNumber(14)).toBe("14")
  })
})

describe("review findings: answers reported as successes must be right", () => {
  it("integers are never rounded; other values lose only binary noise", () => {
    expect(formatNumber(1234567890123 + 1)).toBe("1234567890124")
    expect(formatNumber(2 ** 53)).toBe("9007199254740992")
    expect(formatNumber(99999999999999)).toBe("99999999999999")
    expect(formatNumber(123456789012345)).toBe("123456789012345")
    expect(formatNumber(0.1 + 0.2)).toBe("0.3")
    expect(formatNumber(7 / 3)).toBe("2.33333333333333")
  })

  it("a formatted result reads back as the value (integers exactly, others within 15 significant digits)", () => {
    fc.assert(
      fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (v) => {
        const back = Number(formatNumber(v))
        if (Number.isInteger(v)) return back === v || (Object.is(v, -0) && back === 0)
        return Math.abs(back - v) <= Math.abs(v) * 1e-14
      })
    )
  })

  it("arithmetic beats a bare number: \"In 2024, what is 1+1?\" is 1+1", () => {
    expect(extractExpression("In 2024, what is 1+1?")).toBe("1+1")
    expect(extractExpression("room 12345 and 2*3")).toBe("2*3")
    expect(extractExpression("the year 2024")).toBe("2024")
  })
})
