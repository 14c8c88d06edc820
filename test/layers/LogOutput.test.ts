import { describe, expect, it } from "@effect/vitest"
import { Effect, Logger } from "effect"
import * as LogOutput from "../../src/layers/LogOutput.ts"

const turnEnd = () => new Promise<void>((resolve) => setImmediate(() => setImmediate(resolve)))

describe("LogOutput", () => {
  it("the lines of one event-loop turn leave in one write, in order, at the end of the turn", async () => {
    const writes: Array<string> = []
    const buffer = LogOutput.makeLineBuffer((text) => void writes.push(text))
    buffer.push("a=1")
    buffer.push("b=2")
    await new Promise<void>((resolve) => process.nextTick(resolve))
    buffer.push("c=3")
    expect(writes).toEqual([])
    await turnEnd()
    expect(writes).toEqual(["a=1\nb=2\nc=3\n"])
    buffer.push("d=4")
    buffer.flush()
    expect(writes).toEqual(["a=1\nb=2\nc=3\n", "d=4\n"])
    await turnEnd()
    expect(writes).toHaveLength(2)
  })

  it("writes the logfmt line Logger.consoleLogFmt prints, one per log call", async () => {
    const writes: Array<string> = []
    const buffer = LogOutput.makeLineBuffer((text) => void writes.push(text))
    await Effect.runPromise(
      Effect.all([Effect.logInfo("run ended"), Effect.logWarning("second")]).pipe(
        Effect.annotateLogs({ run_id: "run_1", outcome: "completed" }),
        Effect.provide(Logger.layer([LogOutput.logFmt(buffer)]))
      )
    )
    await turnEnd()
    const lines = writes.join("").split("\n").filter((l) => l.length > 0)
    expect(lines).toHaveLength(2)
    expect(lines[0]).toMatch(/^timestamp=\S+ level=INFO fiber=#\d+ message="run ended" run_id=run_1 outcome=completed$/)
    expect(lines[1]).toMatch(/level=WARN .*message=second/)
  })
})
