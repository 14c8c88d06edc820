import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { MAX_DEPTH } from "../../src/layers/AgentInstanceFactory.ts"
import { RecordedEvents } from "../../src/layers/WebSocketBridgeRecording.ts"
import type { AgentEvent } from "../../src/protocol/Protocol.ts"
import { AgentInstanceFactory } from "../../src/services/AgentInstanceFactory.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"
import { RecordingRuntime, runInvariants } from "../fixtures/runtime.ts"

const runAgent = (agent: string | undefined, request: string, user_id = "alice") =>
  Effect.gen(function*() {
    const factory = yield* AgentInstanceFactory
    const recorded = yield* RecordedEvents
    const context = yield* UserExecutionContext.make({ user_id })
    const instance = yield* factory.create(agent, context)
    const outcome = yield* instance.run(request)
    const events = yield* recorded.ofRun(context.run_id)
    return { outcome, events, context }
  })

const types = (events: ReadonlyArray<AgentEvent>) => events.map((e) => `${e.type}@${e.depth}`)

describe("AgentInstanceFactory", () => {
  it.effect("calculator: started, thinking, tool_executing, tool_completed (14), completed", () =>
    Effect.gen(function*() {
      const { context, events, outcome } = yield* runAgent("calculator", "2+3*4")
      expect(types(events)).toEqual([
        "agent_started@0",
        "agent_thinking@0",
        "tool_executing@0",
        "tool_completed@0",
        "agent_completed@0"
      ])
      expect(runInvariants(events)).toEqual([])
      expect(events[0]).toMatchObject({ task_description: "2+3*4", request_id: context.request_id, user_id: "alice" })
      const executing = events[2]!
      const completed = events[3]!
      expect(executing).toMatchObject({ tool_name: "calculate", parameters: { expression: "2+3*4" } })
      expect(completed).toMatchObject({ tool_name: "calculate", success: true, results: { status: "success", output: "14" } })
      expect(executing.type === "tool_executing" && completed.type === "tool_completed" && executing.execution_id === completed.execution_id).toBe(true)
      expect(outcome).toMatchObject({ status: "completed" })
      expect(outcome.final_response).toContain("14")
      expect(events.every((e) => e.run_id === context.run_id && e.thread_id === context.thread_id && !Number.isNaN(Date.parse(e.timestamp)))).toBe(true)
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("calculator: a malformed expression is a failed tool call and a clear answer, not a failed run", () =>
    Effect.gen(function*() {
      const { events, outcome } = yield* runAgent("calculator", "what is 2+*3?")
      const completed = events.find((e) => e.type === "tool_completed")
      expect(completed).toMatchObject({ success: false, results: { status: "error" } })
      expect(completed?.type === "tool_completed" && completed.results.error).toContain("unexpected \"*\"")
      expect(outcome.status).toBe("completed")
      expect(outcome.final_response).toContain("could not calculate")
      expect(runInvariants(events)).toEqual([])
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("supervisor (the default): triage then calculator as depth-1 sub-agents, each with its own started/completed", () =>
    Effect.gen(function*() {
      const { events, outcome } = yield* runAgent(undefined, "what is (2+3)*4.5?")
      expect(runInvariants(events)).toEqual([])
      expect(events[0]).toMatchObject({ type: "agent_started", agent_name: "supervisor", depth: 0 })
      const sub = events.filter((e) => e.depth === 1 && (e.type === "agent_started" || e.type === "agent_completed"))
      expect(sub.map((e) => `${e.type}:${e.agent_name}`)).toEqual([
        "agent_started:triage",
        "agent_completed:triage",
        "agent_started:calculator",
        "agent_completed:calculator"
      ])
      expect(outcome.final_response).toContain("22.5")
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("supervisor routes plain text to echo", () =>
    Effect.gen(function*() {
      const { events, outcome } = yield* runAgent(undefined, "hello there")
      expect(events.some((e) => e.type === "agent_started" && e.agent_name === "echo" && e.depth === 1)).toBe(true)
      expect(outcome.final_response).toBe("echo: hello there")
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("a typed agent failure sends agent_error then agent_completed failed, last", () =>
    Effect.gen(function*() {
      const { events, outcome } = yield* runAgent("refuser", "please")
      expect(types(events)).toEqual(["agent_started@0", "agent_error@0", "agent_completed@0"])
      expect(events[1]).toMatchObject({ error: { code: "REFUSED", message: "I will not" } })
      expect(events[2]).toMatchObject({ status: "failed" })
      expect(outcome).toMatchObject({ status: "failed", error: { code: "REFUSED" } })
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("a defect is reported as INTERNAL and never escapes the run", () =>
    Effect.gen(function*() {
      const { events, outcome } = yield* runAgent("crasher", "go")
      expect(events[1]).toMatchObject({ type: "agent_error", error: { code: "INTERNAL" } })
      expect(events[1]?.type === "agent_error" && events[1].error.message).toContain("kaboom")
      expect(outcome.status).toBe("failed")
      expect(runInvariants(events)).toEqual([])
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("an uncaught tool failure: tool_completed with the described error, then TOOL_FAILED", () =>
    Effect.gen(function*() {
      const { events } = yield* runAgent("failing-tool", "x")
      expect(types(events)).toEqual(["agent_started@0", "tool_executing@0", "tool_completed@0", "agent_error@0", "agent_completed@0"])
      expect(events[2]).toMatchObject({ success: false, results: { status: "error", error: "not found" } })
      expect(events[3]).toMatchObject({ error: { code: "TOOL_FAILED", message: "lookup: not found" } })
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("a tool timeout: tool_completed with status timeout, then TOOL_TIMEOUT", () =>
    Effect.gen(function*() {
      const recorded = yield* RecordedEvents
      const fiber = yield* Effect.forkChild(runAgent("hanging-tool", "5 seconds"))
      yield* recorded.waitFor((e) => e.type === "tool_executing")
      yield* TestClock.adjust("5 seconds")
      const { events, outcome } = yield* Fiber.join(fiber)
      expect(events[2]).toMatchObject({ type: "tool_completed", success: false, results: { status: "timeout" } })
      expect(outcome.error?.code).toBe("TOOL_TIMEOUT")
      expect(runInvariants(events)).toEqual([])
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("interruption mid-tool still closes the tool call (cancelled) and the run (stopped, cancelled)", () =>
    Effect.gen(function*() {
      const recorded = yield* RecordedEvents
      const fiber = yield* Effect.forkChild(runAgent("hanging-tool", ""))
      const executing = yield* recorded.waitFor((e) => e.type === "tool_executing")
      yield* Fiber.interrupt(fiber)
      const events = yield* recorded.ofRun(executing.run_id)
      expect(types(events)).toEqual(["agent_started@0", "tool_executing@0", "tool_completed@0", "agent_stopped@0", "agent_completed@0"])
      expect(events[2]).toMatchObject({ success: false, results: { status: "cancelled", error: "cancelled" } })
      expect(events[3]).toMatchObject({ reason: "user_request" })
      expect(events[4]).toMatchObject({ status: "cancelled" })
      expect(runInvariants(events)).toEqual([])
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect(`delegation deeper than ${MAX_DEPTH} fails cleanly at every depth`, () =>
    Effect.gen(function*() {
      const { events, outcome } = yield* runAgent("recursive", "again")
      expect(runInvariants(events)).toEqual([])
      expect(Math.max(...events.map((e) => e.depth))).toBe(MAX_DEPTH)
      const completions = events.filter((e) => e.type === "agent_completed")
      expect(completions.map((e) => e.depth)).toEqual(Array.from({ length: MAX_DEPTH + 1 }, (_, i) => MAX_DEPTH - i))
      expect(events.find((e) => e.type === "agent_error")).toMatchObject({ depth: MAX_DEPTH, error: { code: "MAX_DEPTH" } })
      expect(outcome.error?.code).toBe("SUBAGENT_FAILED")
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("delegating to an unknown agent is UNKNOWN_AGENT inside the run", () =>
    Effect.gen(function*() {
      const { events, outcome } = yield* runAgent("lost", "x")
      expect(outcome.error?.code).toBe("UNKNOWN_AGENT")
      expect(outcome.error?.message).toContain("nobody-here")
      expect(runInvariants(events)).toEqual([])
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("an unknown agent is a typed error before any event", () =>
    Effect.gen(function*() {
      const factory = yield* AgentInstanceFactory
      const recorded = yield* RecordedEvents
      const context = yield* UserExecutionContext.make({ user_id: "alice" })
      const error = yield* Effect.flip(factory.create("wizard", context))
      expect(error._tag).toBe("UnknownAgentError")
      expect(error.message).toContain("wizard")
      expect(error.available).toContain("calculator")
      expect(yield* recorded.all).toEqual([])
      expect(factory.agentNames[0]).toBe("supervisor")
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("ticker reads steps and interval_ms and rejects bad values", () =>
    Effect.gen(function*() {
      const ok = yield* runAgent("ticker", "steps=4 interval_ms=0")
      expect(ok.events.filter((e) => e.type === "agent_thinking").map((e) => e.type === "agent_thinking" && e.step_number)).toEqual([1, 2, 3, 4])
      expect(ok.outcome.final_response).toBe("ticked 4 times")
      const bad = yield* runAgent("ticker", "steps=-1")
      expect(bad.outcome.error).toMatchObject({ code: "INVALID_INPUT" })
      expect(bad.outcome.error?.message).toContain("steps")
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("ticker waits interval_ms between steps (driven by the test clock)", () =>
    Effect.gen(function*() {
      const recorded = yield* RecordedEvents
      const fiber = yield* Effect.forkChild(runAgent("ticker", "steps=3 interval_ms=1000"))
      yield* recorded.waitFor((e) => e.type === "agent_thinking" && e.step_number === 1)
      expect((yield* recorded.all).filter((e) => e.type === "agent_thinking")).toHaveLength(1)
      yield* TestClock.adjust("1 second")
      yield* recorded.waitFor((e) => e.type === "agent_thinking" && e.step_number === 2)
      yield* TestClock.adjust("1 second")
      const { events } = yield* Fiber.join(fiber)
      expect(events.filter((e) => e.type === "agent_thinking")).toHaveLength(3)
    }).pipe(Effect.provide(RecordingRuntime)))
})
