/**
 * The pieces of the run events endpoint without HTTP: query parsing (property
 * tests), SSE encoding (checked against an EventSource-style parser), and the
 * event stream over the in-memory log on the TestClock (replay, live, end,
 * keepalive comments, pull-based reading).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Result, Stream } from "effect"
import { TestClock } from "effect/testing"
import fc from "fast-check"
import * as RunLogMemory from "../../src/layers/RunLogMemory.ts"
import type { AgentEvent } from "../../src/protocol/Protocol.ts"
import * as RunEventsHttp from "../../src/server/RunEventsHttp.ts"
import { thinking } from "../fixtures/events.ts"
import { makeSseParser, type SseMessage } from "../fixtures/sse.ts"

const parseAll = (chunks: ReadonlyArray<string>) => {
  const messages: Array<SseMessage> = []
  const comments: Array<string> = []
  const feed = makeSseParser((m) => messages.push(m), (c) => comments.push(c))
  for (const chunk of chunks) feed(chunk)
  return { messages, comments }
}

/** `text` cut at the given positions. */
const cut = (text: string, at: ReadonlyArray<number>): Array<string> => {
  const points = [...new Set(at.map((p) => p % (text.length + 1)))].sort((a, b) => a - b)
  const parts: Array<string> = []
  let from = 0
  for (const p of points) {
    parts.push(text.slice(from, p))
    from = p
  }
  parts.push(text.slice(from))
  return parts
}

describe("parseSeq", () => {
  it("accepts plain decimal digits up to MAX_SAFE_INTEGER", () => {
    fc.assert(fc.property(fc.maxSafeNat(), (n) => RunEventsHttp.parseSeq(String(n)) === n))
  })

  it("accepts a string exactly when it is 1 to 16 digits within MAX_SAFE_INTEGER", () => {
    const chars = fc.constantFrom("0", "1", "9", "-", "+", ".", "e", "x", " ", "٣", "")
    fc.assert(fc.property(fc.array(chars, { maxLength: 18 }).map((cs) => cs.join("")), (text) => {
      const expected = /^[0-9]{1,16}$/.test(text) && Number(text) <= Number.MAX_SAFE_INTEGER ? Number(text) : undefined
      expect(RunEventsHttp.parseSeq(text)).toBe(expected)
    }))
    expect(RunEventsHttp.parseSeq("9007199254740991")).toBe(Number.MAX_SAFE_INTEGER)
    expect(RunEventsHttp.parseSeq("9007199254740992")).toBeUndefined()
    expect(RunEventsHttp.parseSeq("007")).toBe(7)
  })
})

describe("parseListQuery", () => {
  const statuses = ["running", "completed", "failed", "cancelled", "timed_out"] as const

  it("decodes every valid combination; empty values are none", () => {
    fc.assert(fc.property(
      fc.option(fc.stringMatching(/^[A-Za-z0-9._:-]{1,128}$/).filter((s) => !["registry", "placeholder", "none", "null", "undefined"].includes(s.toLowerCase())), { nil: undefined }),
      fc.option(fc.constantFrom(...statuses), { nil: undefined }),
      fc.option(fc.integer({ min: 1, max: 100 }), { nil: undefined }),
      (thread_id, status, limit) => {
        const params = new URLSearchParams()
        params.set("thread_id", thread_id ?? "")
        if (status !== undefined) params.set("status", status)
        if (limit !== undefined) params.set("limit", String(limit))
        params.set("token", "ignored")
        const parsed = RunEventsHttp.parseListQuery(params)
        expect(parsed).toEqual(Result.succeed({ thread_id, status, limit }))
      }
    ))
  })

  it("names the parameter that is wrong", () => {
    fc.assert(fc.property(
      fc.constantFrom("thread_id", "status", "limit"),
      fc.string({ minLength: 1, maxLength: 40 }),
      (name, value) => {
        const valid = name === "thread_id"
          ? /^[A-Za-z0-9._:-]{1,128}$/.test(value) && !["registry", "placeholder", "none", "null", "undefined"].includes(value.toLowerCase())
          : name === "status"
          ? (statuses as ReadonlyArray<string>).includes(value)
          : /^[0-9]+$/.test(value) && Number(value) >= 1 && Number(value) <= 100
        const parsed = RunEventsHttp.parseListQuery(new URLSearchParams([[name, value]]))
        if (valid) {
          expect(Result.isSuccess(parsed)).toBe(true)
        } else {
          expect(Result.isFailure(parsed) && parsed.failure.name).toBe(name)
          expect(Result.isFailure(parsed) && parsed.failure.message.startsWith(`${name} `)).toBe(true)
        }
      }
    ))
    const twice = RunEventsHttp.parseListQuery(new URLSearchParams("status=running&status=failed"))
    expect(Result.isFailure(twice) && twice.failure.message).toBe("status is given 2 times; give it once")
  })
})

describe("parseAfterSeq", () => {
  it("Last-Event-ID wins over after_seq; a blank one is absent; neither is 0", () => {
    const q = (s: string) => new URLSearchParams(s)
    const last = (after_seq: number) => Result.succeed({ after_seq, name: "Last-Event-ID" })
    const query = (after_seq: number) => Result.succeed({ after_seq, name: "after_seq" })
    expect(RunEventsHttp.parseAfterSeq(q("after_seq=5"), "9")).toEqual(last(9))
    expect(RunEventsHttp.parseAfterSeq(q("after_seq=bad"), "9")).toEqual(last(9))
    expect(RunEventsHttp.parseAfterSeq(q("after_seq=5"), " ")).toEqual(query(5))
    expect(RunEventsHttp.parseAfterSeq(q(""), undefined)).toEqual(query(0))
    expect(RunEventsHttp.parseAfterSeq(q("after_seq="), undefined)).toEqual(query(0))
    const bad = RunEventsHttp.parseAfterSeq(q("after_seq=1"), "x1")
    expect(Result.isFailure(bad) && bad.failure.name).toBe("Last-Event-ID")
    const badQuery = RunEventsHttp.parseAfterSeq(q("after_seq=-3"), undefined)
    expect(Result.isFailure(badQuery) && badQuery.failure.message).toBe("after_seq must be a whole number from 0 in decimal digits, got \"-3\"")
  })
})

describe("wantsEventStream", () => {
  it("reads Accept", () => {
    expect(RunEventsHttp.wantsEventStream("text/event-stream")).toBe(true)
    expect(RunEventsHttp.wantsEventStream("application/json, Text/Event-Stream;q=0.9")).toBe(true)
    expect(RunEventsHttp.wantsEventStream("*/*")).toBe(false)
    expect(RunEventsHttp.wantsEventStream(undefined)).toBe(false)
  })
})

describe("SSE encoding", () => {
  it("an EventSource-style parser gets back id, type and data of every event, however the text is cut", () => {
    const frame = fc.string({ unit: fc.constantFrom("a", "{", "\"", ":", " ", "\n", "\r", "é", "😀", "data: "), maxLength: 30 })
    const event = fc.record({
      seq: fc.integer({ min: 1, max: 1_000_000 }),
      type: fc.constantFrom("agent_started", "agent_thinking", "agent_completed" as const),
      frame
    })
    fc.assert(fc.property(fc.array(event, { minLength: 1, maxLength: 5 }), fc.array(fc.nat(), { maxLength: 6 }), (events, at) => {
      const text = RunEventsHttp.OPENING + events.map(RunEventsHttp.encodeEvent).join("") + RunEventsHttp.KEEPALIVE
      const { comments, messages } = parseAll(cut(text, at))
      expect(messages).toEqual(events.map((e) => ({ id: String(e.seq), event: e.type, data: e.frame.replace(/\r\n|\r/g, "\n") })))
      expect(comments).toEqual(["ok", "keepalive"])
    }))
  })

  it("a JSON frame is one data line", () => {
    const frame = JSON.stringify(thinking("u", 7))
    expect(RunEventsHttp.encodeEvent({ seq: 7, type: "agent_thinking", frame })).toBe(`id: 7\nevent: agent_thinking\ndata: ${frame}\n\n`)
  })

  it("the JSON page is an array of the frames", () => {
    const frames = [thinking("u", 1), thinking("u", 2)].map((e) => JSON.stringify(e))
    const body = RunEventsHttp.encodeJsonArray(frames.map((frame, i) => ({ seq: i + 1, type: "agent_thinking", frame })))
    expect(JSON.parse(body)).toEqual(frames.map((f) => JSON.parse(f)))
    expect(RunEventsHttp.encodeJsonArray([])).toBe("[]")
  })
})

const completed = (user_id: string, seq: number, run_id: string): AgentEvent => ({
  type: "agent_completed",
  status: "completed",
  final_response: "done",
  duration_ms: 1,
  event_id: `${run_id}:${seq}`,
  run_id,
  thread_id: "thread-1",
  user_id,
  agent_name: "test",
  depth: 0,
  seq,
  timestamp: new Date(0).toISOString()
})

const settings = { retentionMs: 60_000, maxEventsPerRun: 100_000, maxBytes: 64 * 1024 * 1024, maxBytesPerUser: 64 * 1024 * 1024, tombstoneMs: 60_000 }

describe("eventStream over the in-memory log", () => {
  it.effect("replays, follows live, sends a keepalive only while idle, and ends after the run's last event", () =>
    Effect.gen(function*() {
      const log = yield* RunLogMemory.make(settings)
      const append = (event: AgentEvent) => log.append(event, JSON.stringify(event))
      yield* append(thinking("u", 1, "r1"))
      yield* append(thinking("u", 2, "r1"))
      const chunks: Array<string> = []
      const fiber = yield* Effect.forkChild(Stream.runForEach(RunEventsHttp.eventStream(log, "u", "r1", 0, 1000), (c) => Effect.sync(() => chunks.push(c))))
      yield* Effect.yieldNow
      // the replay, no keepalive yet
      expect(parseAll(chunks).messages.map((m) => m.id)).toEqual(["1", "2"])
      expect(parseAll(chunks).comments).toEqual(["ok"])
      yield* TestClock.adjust(999)
      expect(parseAll(chunks).comments).toEqual(["ok"])
      yield* TestClock.adjust(1)
      expect(parseAll(chunks).comments).toEqual(["ok", "keepalive"])
      yield* append(thinking("u", 3, "r1"))
      yield* Effect.yieldNow
      expect(parseAll(chunks).messages.map((m) => m.id)).toEqual(["1", "2", "3"])
      yield* TestClock.adjust(2000)
      expect(parseAll(chunks).comments).toEqual(["ok", "keepalive", "keepalive", "keepalive"])
      yield* append(completed("u", 4, "r1"))
      yield* Fiber.join(fiber)
      const { messages } = parseAll(chunks)
      expect(messages.map((m) => [m.id, m.event])).toEqual([["1", "agent_thinking"], ["2", "agent_thinking"], ["3", "agent_thinking"], ["4", "agent_completed"]])
    }))

  it.effect("pull-based: nothing is read from the log beyond what the consumer asked for", () =>
    Effect.gen(function*() {
      const log = yield* RunLogMemory.make(settings)
      for (let seq = 1; seq <= 2000; seq++) yield* log.append(thinking("u", seq, "r2"), JSON.stringify(thinking("u", seq, "r2")))
      yield* log.append(completed("u", 2001, "r2"), JSON.stringify(completed("u", 2001, "r2")))
      let reads = 0
      const counted = { ...log, read: (...args: Parameters<typeof log.read>) => Effect.tap(log.read(...args), () => Effect.sync(() => void reads++)) }
      // the opening comment, then one page of the log
      const taken = yield* Stream.runCollect(Stream.take(RunEventsHttp.eventStream(counted, "u", "r2", 0, 1000), 2))
      expect(reads).toBe(1)
      expect(parseAll(taken).messages.length).toBeLessThan(2001)
      const all = yield* Stream.runCollect(RunEventsHttp.eventStream(counted, "u", "r2", 0, 1000))
      expect(parseAll(all).messages.map((m) => Number(m.id))).toEqual(Array.from({ length: 2001 }, (_, i) => i + 1))
    }))

  it.effect("a run that expires while followed ends the stream with a comment saying so", () =>
    Effect.gen(function*() {
      const log = yield* RunLogMemory.make({ ...settings, retentionMs: 1000 })
      yield* log.append(thinking("u", 1, "r3"), JSON.stringify(thinking("u", 1, "r3")))
      yield* log.append(completed("u", 2, "r3"), JSON.stringify(completed("u", 2, "r3")))
      yield* TestClock.adjust(1000)
      const chunks = yield* Stream.runCollect(RunEventsHttp.eventStream(log, "u", "r3", 0, 1000))
      const { comments, messages } = parseAll(chunks)
      expect(messages).toEqual([])
      expect(comments[1]).toMatch(/^RUN_EXPIRED: /)
    }))
})
