/**
 * A run another instance took over (issue 12, fencing): the log answers its
 * appends `fenced`. The emitter delivers none of them, takes no `seq` for
 * them, and asks its engine once to stop the run with `instance_lost`, without
 * the "past its hard cap" error that a `refused` append logs.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Logger } from "effect"
import * as RunEmitterLayer from "../../src/layers/RunEmitter.ts"
import type { StopCause } from "../../src/services/RunEmitter.ts"
import type { AppendResult } from "../../src/services/RunLog.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"

/** An emitter over a log that gives `answers` in turn, recording deliveries, stop requests and log lines. */
const emitterOver = (answers: Array<AppendResult>) =>
  Effect.gen(function*() {
    const delivered: Array<number> = []
    const stops: Array<StopCause> = []
    const context = yield* UserExecutionContext.make({ user_id: "alice" })
    const emitter = RunEmitterLayer.make(context, {
      log: { append: () => Effect.sync(() => answers.shift() ?? "ok"), appendSync: undefined },
      bridge: { emit: (event) => Effect.sync(() => void delivered.push(event.seq)), deliverSync: undefined }
    })
    emitter.onStopRequest((cause) => void stops.push(cause))
    return { emitter, delivered, stops }
  })

describe("RunEmitter: a run another instance took over", () => {
  it.effect("fenced appends are not delivered and take no seq; the run is asked to stop once, with instance_lost, and no hard-cap error is logged", () => {
    const lines: Array<string> = []
    return Effect.gen(function*() {
      const { delivered, emitter, stops } = yield* emitterOver(["ok", "ok", "fenced", "fenced", "fenced"])
      yield* emitter.emit("a", 0, { type: "agent_started", task_description: "t" })
      yield* emitter.emit("a", 0, { type: "agent_thinking", reasoning: "1" })
      yield* emitter.emit("a", 0, { type: "agent_thinking", reasoning: "2" })
      // what the agent sends while it stops is dropped too
      yield* emitter.emit("a", 0, { type: "agent_error", error: { code: "INSTANCE_LOST", message: "x" } })
      yield* emitter.emit("a", 0, { type: "agent_completed", status: "failed", final_response: "x", duration_ms: 1 })
      expect(delivered).toEqual([1, 2])
      expect(emitter.lastSeq()).toBe(2)
      expect(stops).toEqual(["instance_lost"])
      expect(emitter.stopCause()).toBe("instance_lost")
      expect(lines.some((l) => l.includes("hard cap"))).toBe(false)
    }).pipe(Effect.provide(Logger.layer([Logger.map(Logger.formatLogFmt, (line) => void lines.push(line))])))
  })

  it.effect("a stop already under way keeps its cause; fenced events are still dropped", () =>
    Effect.gen(function*() {
      const { delivered, emitter, stops } = yield* emitterOver(["ok", "fenced"])
      yield* emitter.emit("a", 0, { type: "agent_started", task_description: "t" })
      emitter.setStopCause("timeout")
      yield* emitter.emit("a", 0, { type: "agent_error", error: { code: "RUN_TIMEOUT", message: "x" } })
      expect(delivered).toEqual([1])
      expect(stops).toEqual([])
      expect(emitter.stopCause()).toBe("timeout")
    }))
})
