/**
 * The client's per-run reorder and dedupe, driven through a fake WebSocket:
 * whatever order and repetition events arrive in, a run's iterator yields
 * 1..n exactly once, in order, and ends. (Regression: a waiting iterator woken
 * by an early, held event used to be forgotten and hang; seed kept below.)
 */
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { type AgentEvent, connect } from "../../src/client/AgentwireClient.ts"

class FakeSocket {
  static last: FakeSocket | undefined
  readyState = 1
  readonly sent: Array<string> = []
  onmessage: ((event: { data: unknown }) => void) | null = null
  onopen: (() => void) | null = null
  onclose: ((event: { code: number }) => void) | null = null
  onerror: (() => void) | null = null
  constructor(_url: string, _protocols: Array<string>) {
    FakeSocket.last = this
  }
  send(data: string) {
    this.sent.push(data)
  }
  close() {
    this.readyState = 3
  }
  receive(frame: unknown) {
    this.onmessage?.({ data: JSON.stringify(frame) })
  }
}

const RUN = "run_0123456789abcdef0123456789abcdef"
const eventAt = (seq: number, last: number) => ({
  ...(seq === last
    ? { type: "agent_completed", status: "completed", final_response: "done", duration_ms: 1 }
    : seq === 1
    ? { type: "agent_started", task_description: "t" }
    : { type: "agent_thinking", reasoning: `step ${seq}` }),
  event_id: `${RUN}:${seq}`,
  run_id: RUN,
  thread_id: "t",
  user_id: "u",
  agent_name: "a",
  depth: 0,
  seq,
  timestamp: "2026-01-01T00:00:00.000Z"
})

const settle = () => new Promise((resolve) => setTimeout(resolve, 0))

describe("per-run reorder and dedupe", () => {
  it("any arrival order with repeats yields 1..n once, in order, then ends", () =>
    fc.assert(fc.asyncProperty(
    fc.integer({ min: 1, max: 40 }).chain((n) =>
      fc.tuple(
        fc.constant(n),
        fc.shuffledSubarray(Array.from({ length: n }, (_, i) => i + 1), { minLength: n, maxLength: n }),
        fc.array(fc.integer({ min: 1, max: n }), { maxLength: 20 })
      )
    ),
    async ([n, order, repeats]) => {
      const client = connect({ url: "ws://fake/ws", token: "t", WebSocket: FakeSocket as never, pingIntervalMs: 0 })
      await settle()
      const socket = FakeSocket.last!
      socket.receive({ type: "connection_established", connection_id: "c", user_id: "u", protocol_version: 1, max_message_bytes: 65536, server_epoch: "e1" })
      const run = client.follow(RUN)
      expect(JSON.parse(socket.sent.at(-1)!)).toMatchObject({ type: "resume_run", run_id: RUN, after_seq: 0 })
      const got: Array<AgentEvent> = []
      const done = (async () => {
        for await (const e of run) got.push(e)
      })()
      // arrivals: the permutation, with repeats spliced in, some before their first copy
      const arrivals = [...order]
      repeats.forEach((seq, i) => arrivals.splice((i * 7) % (arrivals.length + 1), 0, seq))
      for (const seq of arrivals) {
        socket.receive(eventAt(seq, n))
        await settle()
      }
      await done
      client.close()
      expect(got.map((e) => e.seq)).toEqual(Array.from({ length: n }, (_, i) => i + 1))
    }
  ), { numRuns: 60 }))

  it("regression: an iterator waiting while an early event is held still wakes when the gap fills", async () => {
    const client = connect({ url: "ws://fake/ws", token: "t", WebSocket: FakeSocket as never, pingIntervalMs: 0 })
    await settle()
    const socket = FakeSocket.last!
    socket.receive({ type: "connection_established", connection_id: "c", user_id: "u", protocol_version: 1, max_message_bytes: 65536 })
    const run = client.follow(RUN)
    const iterator = run[Symbol.asyncIterator]()
    const first = iterator.next()
    socket.receive(eventAt(2, 3)) // held: 1 is missing
    await settle()
    socket.receive(eventAt(1, 3))
    expect((await first).value?.seq).toBe(1)
    socket.receive(eventAt(3, 3))
    expect((await iterator.next()).value?.seq).toBe(2)
    expect((await iterator.next()).value?.seq).toBe(3)
    expect((await iterator.next()).done).toBe(true)
    client.close()
  })
})
