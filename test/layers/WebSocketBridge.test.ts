import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import * as WebSocketBridgeMemory from "../../src/layers/WebSocketBridgeMemory.ts"
import * as WebSocketBridgeRecording from "../../src/layers/WebSocketBridgeRecording.ts"
import { WebSocketBridge } from "../../src/services/WebSocketBridge.ts"
import { bridgeSuite } from "../fixtures/bridge-suite.ts"
import { thinking } from "../fixtures/events.ts"

describe("WebSocketBridge", () => {
  bridgeSuite("in-memory", WebSocketBridgeMemory.layer)
  bridgeSuite("recording", WebSocketBridgeRecording.layer)
})

describe("WebSocketBridgeRecording", () => {
  it.effect("records events in order and resumes waiters when a matching event arrives", () =>
    Effect.gen(function*() {
      const bridge = yield* WebSocketBridge
      const recorded = yield* WebSocketBridgeRecording.RecordedEvents
      const waiter = yield* Effect.forkChild(recorded.waitFor((e) => e.seq === 3))
      yield* bridge.emit(thinking("alice", 1))
      yield* bridge.emit(thinking("bob", 2, "other"))
      yield* bridge.emit(thinking("alice", 3))
      const found = yield* Fiber.join(waiter)
      expect(found.seq).toBe(3)
      expect((yield* recorded.all).map((e) => e.seq)).toEqual([1, 2, 3])
      expect((yield* recorded.ofRun("run-alice")).map((e) => e.seq)).toEqual([1, 3])
      // a past event is found without waiting
      expect((yield* recorded.waitFor((e) => e.run_id === "other")).seq).toBe(2)
      yield* recorded.clear
      expect(yield* recorded.all).toEqual([])
    }).pipe(Effect.provide(WebSocketBridgeRecording.layer)))
})
