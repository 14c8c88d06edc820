import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { MAX_EXPRESSION_LENGTH, MAX_NESTING } from "../../src/agents/Arithmetic.ts"
import { MAX_DURATION_MS } from "../../src/agents/Ticker.ts"
import { RecordedEvents } from "../../src/layers/WebSocketBridgeRecording.ts"
import { AgentInstanceFactory } from "../../src/services/AgentInstanceFactory.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"
import { RecordingRuntime, runInvariants } from "../fixtures/runtime.ts"

const runAgent = (agent: string | undefined, request: string) =>
  Effect.gen(function*() {
    const factory = yield* AgentInstanceFactory
    const recorded = yield* RecordedEvents
    const context = yield* UserExecutionContext.make({ user_id: "alice" })
    const instance = yield* factory.create(agent, context)
    const outcome = yield* instance.run(request)
    const events = yield* recorded.ofRun(context.run_id)
    return { outcome, events }
  })

const toolResult = (events: ReadonlyArray<{ readonly type: string }>) => {
  const completed = events.find((e) => e.type === "tool_completed" && "tool_name" in e && e.tool_name === "calculate")
  return completed as { readonly success: boolean; readonly results: { readonly output?: unknown; readonly error?: string } } | undefined
}

const N = 64 * 1024

describe("calculator agent", () => {
  it.effect("1e308*10 is a clear failure, not 308*10 = 3080", () =>
    Effect.gen(function*() {
      const { events, outcome } = yield* runAgent("calculator", "1e308*10")
      expect(toolResult(events)).toMatchObject({ success: false, results: { error: "the result is not a finite number (at position 6)" } })
      expect(outcome.final_response).toBe("I could not calculate 1e308*10: the result is not a finite number (at position 6).")
      expect(runInvariants(events)).toEqual([])
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("what is 1e3/10? answers 1e3/10 = 100; 1E2 answers 1E2 = 100", () =>
    Effect.gen(function*() {
      expect((yield* runAgent("calculator", "what is 1e3/10?")).outcome.final_response).toBe("1e3/10 = 100")
      expect((yield* runAgent("calculator", "1E2")).outcome.final_response).toBe("1E2 = 100")
      expect((yield* runAgent("calculator", "2+3*4")).outcome.final_response).toBe("2+3*4 = 14")
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("30,000 nested parentheses (fault: tool crashed with a stack overflow): a clear limit message", () =>
    Effect.gen(function*() {
      const long = yield* runAgent("calculator", "(".repeat(30_000) + "1" + ")".repeat(30_000))
      expect(toolResult(long.events)).toMatchObject({
        success: false,
        results: { error: `the expression is longer than ${MAX_EXPRESSION_LENGTH} characters` }
      })
      expect(long.outcome.status).toBe("completed")
      expect(long.outcome.final_response).not.toContain("crashed")
      const deep = yield* runAgent("calculator", "(".repeat(2_000) + "1" + ")".repeat(2_000))
      expect(toolResult(deep.events)).toMatchObject({
        success: false,
        results: { error: `nesting deeper than ${MAX_NESTING} levels at position ${MAX_NESTING + 1}` }
      })
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("\"1\" + 60,000 dots + \" 1\" (fault: blocked the event loop for seconds): a clear answer from the calculator and the supervisor", () =>
    Effect.gen(function*() {
      const request = "1" + ".".repeat(60_000) + " 1"
      const direct = yield* runAgent("calculator", request)
      expect(direct.outcome.final_response).toBe(`I could not calculate ${request}: the expression is longer than ${MAX_EXPRESSION_LENGTH} characters.`)
      const fitting = "1" + ".".repeat(MAX_EXPRESSION_LENGTH - 3) + " 1"
      expect((yield* runAgent("calculator", fitting)).outcome.final_response).toBe(`I could not calculate ${fitting}: unexpected "." at position 3.`)
      const { events, outcome } = yield* runAgent(undefined, request)
      expect(outcome).toMatchObject({ status: "completed", final_response: `echo: ${request}` })
      expect(runInvariants(events)).toEqual([])
    }).pipe(Effect.provide(RecordingRuntime)))
})

describe("triage", () => {
  const route = (request: string) =>
    Effect.map(runAgent("triage", request), ({ outcome }) => outcome.final_response)

  it.effect("routes arithmetic to calculator and the rest to echo", () =>
    Effect.gen(function*() {
      expect(yield* route("what is 2+3*4")).toBe("calculator")
      expect(yield* route("what is 1e3/10?")).toBe("calculator")
      expect(yield* route("(2)*(3)")).toBe("calculator")
      expect(yield* route("what is 2+*3?")).toBe("echo")
      expect(yield* route("hello")).toBe("echo")
      expect(yield* route("call me at 5")).toBe("echo")
      expect(yield* route("the year 1e3")).toBe("echo")
      expect(yield* route("0x10+1")).toBe("echo")
      expect(yield* route("1" + ".".repeat(N - 3) + " 1")).toBe("echo")
      expect(yield* route("1" + " ".repeat(N - 3) + "+1")).toBe("calculator")
    }).pipe(Effect.provide(RecordingRuntime)))
})

describe("ticker", () => {
  const failure = (request: string) =>
    Effect.map(runAgent("ticker", request), ({ events, outcome }) => {
      expect(events.some((e) => e.type === "agent_thinking")).toBe(false)
      return outcome.error
    })

  it.effect("only plain decimal integers: steps=0x10 and steps=1e3 are refused, naming the key and the value", () =>
    Effect.gen(function*() {
      expect(yield* failure("steps=0x10")).toEqual({
        code: "INVALID_INPUT",
        message: "steps must be a whole number from 0 to 100000 in decimal digits, got \"0x10\""
      })
      expect(yield* failure("steps=1e3")).toMatchObject({ code: "INVALID_INPUT", message: expect.stringContaining("steps") })
      expect((yield* failure("steps=1e3"))?.message).toContain("\"1e3\"")
      for (const bad of ["+5", "2.0", "-1", "", "5,", " 0b11", "Infinity", "١٢"]) {
        expect(yield* failure(`steps=${bad}`), bad).toMatchObject({ code: "INVALID_INPUT" })
      }
      expect(yield* failure("steps=2 interval_ms=1e2")).toMatchObject({ code: "INVALID_INPUT", message: expect.stringContaining("interval_ms") })
      expect(yield* failure("steps=2 interval_ms=60001")).toMatchObject({ code: "INVALID_INPUT", message: expect.stringContaining("interval_ms") })
      expect(yield* failure("steps=100001 interval_ms=0")).toMatchObject({ code: "INVALID_INPUT" })
      expect(yield* failure("steps=2 steps=3")).toEqual({ code: "INVALID_INPUT", message: "steps is given 2 times; give it once" })
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("a long value is cut in the message", () =>
    Effect.gen(function*() {
      const error = yield* failure(`steps=${"9".repeat(N - 6)}`)
      expect(error?.message).toBe(`steps must be a whole number from 0 to 100000 in decimal digits, got "${"9".repeat(32)}…"`)
      const repeated = yield* failure("steps=".repeat(N / 6))
      expect(repeated?.message).toBe(`steps must be a whole number from 0 to 100000 in decimal digits, got "${"steps=".repeat(6).slice(0, 32)}…"`)
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect(`a run may last at most ${MAX_DURATION_MS} ms; big bursts without pauses stay allowed`, () =>
    Effect.gen(function*() {
      expect(yield* failure("steps=1000 interval_ms=1000")).toEqual({
        code: "INVALID_INPUT",
        message: `steps=1000 interval_ms=1000 would run for 999000 ms; a ticker may run at most ${MAX_DURATION_MS} ms ((steps - 1) × interval_ms)`
      })
      expect(yield* failure("steps=100000 interval_ms=60000")).toMatchObject({ code: "INVALID_INPUT" })
      expect(yield* failure("steps=10002 interval_ms=60")).toMatchObject({ code: "INVALID_INPUT" })
      const recorded = yield* RecordedEvents
      for (const request of ["steps=10001 interval_ms=60", "steps=100000 interval_ms=0", "steps=2 interval_ms=60000"]) {
        const fiber = yield* Effect.forkChild(runAgent("ticker", request))
        const first = yield* recorded.waitFor((e) =>
          e.type === "agent_thinking" && e.agent_name === "ticker" && e.reasoning.endsWith(`of ${request.slice(6, request.indexOf(" "))}`)
        )
        expect(first).toMatchObject({ type: "agent_thinking", step_number: 1 })
        yield* Fiber.interrupt(fiber)
      }
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("spaces around = are fine; keys inside other words are not read", () =>
    Effect.gen(function*() {
      const { outcome } = yield* runAgent("ticker", "please steps = 3 interval_ms= 0 mysteps=9 xsteps=8")
      expect(outcome.final_response).toBe("ticked 3 times")
      const words = yield* runAgent("ticker", "interval_ms=0 " + "steps ".repeat((N - 20) / 6))
      expect(words.outcome.final_response).toBe("ticked 10 times")
    }).pipe(Effect.provide(RecordingRuntime)))
})
