/**
 * The run emitter builds each frame from the body's JSON and a stamp encoded
 * once per run: the frame must be, byte for byte, `JSON.stringify` of the
 * stamped event the log and the sockets are handed, whatever the body holds
 * (stamp fields an agent tried to set, `toJSON`, escapes, unicode, nesting)
 * and whatever the ids and agent names are.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as fc from "fast-check"
import * as RunEmitter from "../../src/layers/RunEmitter.ts"
import type { AgentEvent, AgentEventBody } from "../../src/protocol/Protocol.ts"

interface Seen {
  readonly event: AgentEvent
  readonly frame: string
}

/** An emitter whose log and bridge record what they were handed. */
const recording = (context: { user_id: string; thread_id: string; run_id: string; request_id: string }) => {
  const logged: Array<Seen> = []
  const delivered: Array<Seen> = []
  const emitter = RunEmitter.make(context, {
    log: { append: () => Effect.succeed("ok" as const), appendSync: (event, frame) => (logged.push({ event, frame }), "ok") },
    bridge: { emit: () => Effect.void, deliverSync: (event, frame) => void delivered.push({ event, frame: frame! }) }
  })
  return { emitter, logged, delivered }
}

const STAMP_KEYS = ["event_id", "run_id", "thread_id", "user_id", "agent_name", "depth", "seq", "timestamp"] as const

const id = fc.stringMatching(/^[A-Za-z0-9._:-]{1,40}$/)
const key = fc.oneof(fc.constantFrom(...STAMP_KEYS, "type", "reasoning", "toJSON"), fc.string(), fc.string({ unit: "binary", maxLength: 6 }))
const body = fc.dictionary(key, fc.jsonValue({ maxDepth: 2 }), { maxKeys: 6 })
const agentName = fc.oneof(fc.constant("ticker"), fc.string(), fc.string({ unit: "binary", maxLength: 8 }))

const check = (context: { user_id: string; thread_id: string; run_id: string; request_id: string }, emits: ReadonlyArray<readonly [string, number, object]>) => {
  const { emitter, logged, delivered } = recording(context)
  Effect.runSync(Effect.forEach(emits, ([agent, depth, b]) => emitter.emit(agent, depth, b as AgentEventBody), { discard: true }))
  expect(delivered).toHaveLength(emits.length)
  for (const [i, seen] of delivered.entries()) {
    expect(seen.frame).toBe(JSON.stringify(seen.event))
    expect(logged[i]!.frame).toBe(seen.frame)
    // a body's own toJSON replaces the whole event in JSON.stringify (as it always did): nothing more to read
    if ("toJSON" in emits[i]![2]) continue
    const parsed = JSON.parse(seen.frame) as Record<string, unknown>
    expect(parsed.seq).toBe(i + 1)
    expect(parsed.event_id).toBe(`${context.run_id}:${i + 1}`)
    expect(parsed.run_id).toBe(context.run_id)
    expect(parsed.user_id).toBe(context.user_id)
    expect(parsed.agent_name).toBe(emits[i]![0])
  }
}

describe("RunEmitter: the frame is JSON.stringify of the stamped event", () => {
  it("for the built-in events' shapes", () => {
    check({ user_id: "alice", thread_id: "thread_1", run_id: "run_1", request_id: "req_1" }, [
      ["ticker", 0, { type: "agent_started", task_description: "steps=3 \"quoted\" — ünïcode 🙂", request_id: "req_1" }],
      ["ticker", 0, { type: "agent_thinking", reasoning: "tick 1 of 3", step_number: 1 }],
      ["helper", 1, { type: "agent_thinking", reasoning: "line\nbreak\u2028" }],
      ["ticker", 0, {}],
      ["ticker", 0, { type: "agent_thinking", reasoning: "an agent's own seq is overwritten", seq: 99, run_id: "other" }],
      ["ticker", 0, { type: "agent_thinking", toJSON: () => ({ replaced: true }) }],
      ["ticker", 0, { type: "agent_completed", status: "completed", final_response: "done", duration_ms: 1.5 }]
    ])
  })

  it("for any ids, agent names, depths and bodies", () => {
    fc.assert(
      fc.property(id, id, id, fc.array(fc.tuple(agentName, fc.oneof(fc.nat(5), fc.double()), body), { maxLength: 12 }), (user_id, thread_id, run_id, emits) => {
        check({ user_id, thread_id, run_id, request_id: "req_1" }, emits)
      }),
      { numRuns: 300 }
    )
  })
})
