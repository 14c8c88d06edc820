/**
 * Runs `examples/embedding.ts`: the recording variant (events asserted one by
 * one) and the server variant (the same run over a real WebSocket).
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Effect, References } from "effect"
import { ask, AppLive, describeEvent, recordRun, ServerLive } from "../examples/embedding.ts"
import { AgentwireServer, Auth, Protocol } from "../src/index.ts"

/** Hides the runtime's INFO log lines (run started / ended, connection opened). */
const quiet = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provideService(effect, References.MinimumLogLevel, "Warn")

const stampsOf = (events: ReadonlyArray<Protocol.AgentEvent>) => events.map((e) => [e.seq, e.depth, e.type, e.agent_name])

describe("examples/embedding.ts", () => {
  it.effect("records a custom agent's run: tool call, delegation to echo at depth 1, final response", () =>
    Effect.gen(function*() {
      const { events, outcome } = yield* recordRun("alice", "What is the weather in Lisbon?")

      expect(stampsOf(events)).toEqual([
        [1, 0, "agent_started", "forecaster"],
        [2, 0, "agent_thinking", "forecaster"],
        [3, 0, "tool_executing", "forecaster"],
        [4, 0, "tool_completed", "forecaster"],
        [5, 0, "agent_thinking", "forecaster"],
        [6, 1, "agent_started", "echo"],
        [7, 1, "agent_thinking", "echo"],
        [8, 1, "agent_completed", "echo"],
        [9, 0, "agent_completed", "forecaster"]
      ])
      // one run, one user, event ids derived from run and seq
      const run_id = events[0]!.run_id
      for (const e of events) {
        expect(e.run_id).toBe(run_id)
        expect(e.user_id).toBe("alice")
        expect(e.event_id).toBe(`${run_id}:${e.seq}`)
      }

      const [started, , executing, completed] = events
      expect(started).toMatchObject({ type: "agent_started", task_description: "What is the weather in Lisbon?" })
      expect(executing).toMatchObject({ type: "tool_executing", tool_name: "forecast", parameters: { city: "Lisbon" } })
      expect(completed).toMatchObject({
        type: "tool_completed",
        tool_name: "forecast",
        success: true,
        results: { status: "success", output: { celsius: 21, sky: "sunny" } }
      })
      assert(executing?.type === "tool_executing" && completed?.type === "tool_completed")
      expect(completed.execution_id).toBe(executing.execution_id)

      const last = events.at(-1)!
      expect(last).toMatchObject({ type: "agent_completed", depth: 0, status: "completed", final_response: "Lisbon: 21°C, sunny" })
      expect(events.filter((e) => e.type === "agent_completed" && e.depth === 0)).toHaveLength(1)
      expect(outcome).toMatchObject({ status: "completed", final_response: "Lisbon: 21°C, sunny" })
      expect(describeEvent(last)).toBe(" 9 agent_completed [forecaster] completed: Lisbon: 21°C, sunny")
    }).pipe(quiet))

  it.effect("a failed tool call fails the run: agent_error, then agent_completed failed, last", () =>
    Effect.gen(function*() {
      const { events, outcome } = yield* recordRun("alice", "And in Atlantis?")

      expect(events.map((e) => e.type)).toEqual([
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_error",
        "agent_completed"
      ])
      expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6])
      expect(events[3]).toMatchObject({ success: false, results: { status: "error", error: "no forecast for Atlantis" } })
      expect(events[4]).toMatchObject({ error: { code: "TOOL_FAILED", message: "forecast: no forecast for Atlantis" } })
      expect(events[5]).toMatchObject({ depth: 0, status: "failed" })
      expect(outcome.status).toBe("failed")
    }).pipe(quiet))

  it.effect("the production wiring (in-memory bridge) runs the same program", () =>
    Effect.gen(function*() {
      const { outcome } = yield* ask("carol", "weather in Oslo")
      expect(outcome).toMatchObject({ status: "completed", final_response: "Oslo: -3°C, snowing" })
    }).pipe(Effect.provide(AppLive), quiet))

  it.live("ServerLive serves the custom agent over GET /ws", () =>
    Effect.gen(function*() {
      const server = yield* AgentwireServer
      const token = yield* (yield* Auth).issue("bob", 60)
      expect(server.port).toBeGreaterThan(0)

      const { frames, protocol } = yield* Effect.promise(() =>
        new Promise<{ frames: Array<Protocol.ServerMessage>; protocol: string }>((resolve, reject) => {
          const ws = new WebSocket(`${server.url.replace(/^http/, "ws")}/ws`, [Protocol.SUBPROTOCOL, `jwt.${token}`])
          const frames: Array<Protocol.ServerMessage> = []
          ws.onmessage = (message) => {
            const frame = Protocol.decodeServerMessage(String(message.data))
            frames.push(frame)
            if (frame.type === "connection_established") {
              ws.send(JSON.stringify({ type: "start_agent", agent: "forecaster", user_request: "weather in Oslo", request_id: "req-1" }))
            }
            if (frame.type === "agent_completed" && frame.depth === 0) ws.close(1000)
          }
          ws.onerror = () => reject(new Error("socket error"))
          ws.onclose = (event) =>
            frames.at(-1)?.type === "agent_completed" ? resolve({ frames, protocol: ws.protocol }) : reject(new Error(`closed early: ${event.code}`))
        })
      )

      expect(protocol).toBe("agentwire.v1")
      expect(frames[0]).toMatchObject({ type: "connection_established", user_id: "bob", protocol_version: 1, max_message_bytes: 65536 })
      // the start is acknowledged to this connection before the run's first event
      expect(frames[1]).toMatchObject({ type: "run_accepted", request_id: "req-1", agent_name: "forecaster" })
      const events = frames.slice(2)
      expect(events.map((e) => e.type)).toEqual([
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_thinking",
        "agent_started",
        "agent_thinking",
        "agent_completed",
        "agent_completed"
      ])
      expect(events.map((e) => "seq" in e ? e.seq : 0)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9])
      expect(events[0]).toMatchObject({ user_id: "bob", request_id: "req-1", depth: 0 })
      expect(events.at(-1)).toMatchObject({ depth: 0, status: "completed", final_response: "Oslo: -3°C, snowing" })
    }).pipe(Effect.provide(ServerLive), quiet))
})
