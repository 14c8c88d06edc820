import { describe, expect, it } from "@effect/vitest"
import { decodeClientFrame, decodeServerFrame, decodeServerMessage } from "../../src/protocol/Protocol.ts"

describe("decodeClientFrame", () => {
  it("decodes the three client messages", () => {
    expect(decodeClientFrame(`{"type":"ping"}`)).toEqual({ type: "ping" })
    expect(decodeClientFrame(`{"type":"start_agent","agent":"echo","user_request":"hi","thread_id":"t1","request_id":"r1"}`))
      .toEqual({ type: "start_agent", agent: "echo", user_request: "hi", thread_id: "t1", request_id: "r1" })
    expect(decodeClientFrame(`{"type":"user_message","text":"hello"}`)).toEqual({ type: "user_message", text: "hello" })
  })

  it("INVALID_JSON for text that is not JSON", () => {
    expect(decodeClientFrame("{nope")).toMatchObject({ type: "error", code: "INVALID_JSON" })
    expect(decodeClientFrame("")).toMatchObject({ type: "error", code: "INVALID_JSON" })
  })

  it("INVALID_MESSAGE for JSON that is not an object with a type", () => {
    for (const frame of ["[]", "42", "null", `"ping"`, "{}", `{"type":7}`]) {
      expect(decodeClientFrame(frame)).toMatchObject({ type: "error", code: "INVALID_MESSAGE" })
    }
  })

  it("UNKNOWN_TYPE names the type and keeps the request_id", () => {
    const error = decodeClientFrame(`{"type":"stop_everything","request_id":"r-9"}`)
    expect(error).toMatchObject({ type: "error", code: "UNKNOWN_TYPE", request_id: "r-9" })
    expect(error.type === "error" && error.message).toContain("stop_everything")
  })

  it("INVALID_MESSAGE names the offending field", () => {
    const cases: ReadonlyArray<[string, string]> = [
      [`{"type":"start_agent"}`, "user_request"],
      [`{"type":"start_agent","user_request":""}`, "user_request"],
      [`{"type":"start_agent","user_request":42}`, "user_request"],
      [`{"type":"start_agent","user_request":"x","agent":""}`, "agent"],
      [`{"type":"start_agent","user_request":"x","thread_id":"none"}`, "thread_id"],
      [`{"type":"start_agent","user_request":"x","request_id":"has space"}`, "request_id"],
      [`{"type":"user_message"}`, "text"],
      [`{"type":"user_message","text":"x","thread_id":"${"t".repeat(129)}"}`, "thread_id"]
    ]
    for (const [frame, field] of cases) {
      const decoded = decodeClientFrame(frame)
      expect(decoded).toMatchObject({ type: "error", code: "INVALID_MESSAGE" })
      expect(decoded.type === "error" && decoded.message).toContain(`"${field}"`)
    }
  })

  it("decodeServerMessage validates server frames for clients", () => {
    expect(decodeServerMessage(`{"type":"pong","timestamp":"2026-01-01T00:00:00.000Z"}`)).toMatchObject({ type: "pong" })
    expect(() => decodeServerMessage(`{"type":"agent_thinking"}`)).toThrow()
  })
})

describe("partial_result", () => {
  const stamp = {
    event_id: "run_1:2",
    run_id: "run_1",
    thread_id: "t",
    user_id: "u",
    agent_name: "assistant",
    depth: 0,
    seq: 2,
    timestamp: "2026-11-30T05:00:00.000Z"
  }

  it("decodes as a server message with its message_id and delta", () => {
    const frame = JSON.stringify({ type: "partial_result", message_id: "msg_1", delta: "Hel", ...stamp })
    expect(decodeServerMessage(frame)).toEqual({ type: "partial_result", message_id: "msg_1", delta: "Hel", ...stamp })
  })

  it("needs message_id, delta and the stamped fields", () => {
    expect(() => decodeServerMessage(JSON.stringify({ type: "partial_result", delta: "x", ...stamp }))).toThrow(/message_id/)
    expect(() => decodeServerMessage(JSON.stringify({ type: "partial_result", message_id: "m", ...stamp }))).toThrow(/delta/)
    expect(() => decodeServerMessage(JSON.stringify({ type: "partial_result", message_id: "m", delta: "x" }))).toThrow()
  })
})

describe("decodeServerFrame (the client decoder)", () => {
  it("ignores what this version does not know instead of failing: new types, new values, new fields", () => {
    expect(decodeServerFrame(JSON.stringify({ type: "pong", timestamp: "2026-11-30T00:00:00.000Z" }))).toEqual({
      type: "pong",
      timestamp: "2026-11-30T00:00:00.000Z"
    })
    expect(decodeServerFrame(JSON.stringify({ type: "run_resumed", run_id: "r" }))).toBeUndefined()
    expect(decodeServerFrame(JSON.stringify({ type: "error", code: "SOME_FUTURE_CODE", message: "m" }))).toBeUndefined()
    expect(decodeServerFrame("not json")).toBeUndefined()
    // an added field is dropped, the frame still decodes
    expect(decodeServerFrame(JSON.stringify({ type: "pong", timestamp: "t", server_epoch: "e1" }))).toEqual({ type: "pong", timestamp: "t" })
  })
})
