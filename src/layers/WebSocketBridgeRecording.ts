/**
 * A `WebSocketBridge` test double that records every emitted event.
 *
 * It behaves like the in-memory bridge (registered connections still get
 * frames) and also keeps every event in order, so tests can assert on what a
 * run emitted without opening a socket. `RecordedEvents.waitFor` resumes when
 * a matching event arrives: no sleeps.
 *
 * @module
 */
import { Context, Deferred, Effect, Layer } from "effect"
import type { AgentEvent } from "../protocol/Protocol.ts"
import { WebSocketBridge } from "../services/WebSocketBridge.ts"
import * as WebSocketBridgeMemory from "./WebSocketBridgeMemory.ts"

export class RecordedEvents extends Context.Service<RecordedEvents, {
  /** Every event emitted so far, in emit order. */
  readonly all: Effect.Effect<ReadonlyArray<AgentEvent>>
  /** Events of one run, in emit order. */
  readonly ofRun: (run_id: string) => Effect.Effect<ReadonlyArray<AgentEvent>>
  /** Resumes with the first event (past or future) matching `predicate`. */
  readonly waitFor: (predicate: (event: AgentEvent) => boolean) => Effect.Effect<AgentEvent>
  /** Forgets recorded events. */
  readonly clear: Effect.Effect<void>
}>()("agentwire/test/RecordedEvents") {}

interface Waiter {
  readonly predicate: (event: AgentEvent) => boolean
  readonly deferred: Deferred.Deferred<AgentEvent>
}

/** Provides a recording `WebSocketBridge` and the `RecordedEvents` to read it. */
export const layer: Layer.Layer<WebSocketBridge | RecordedEvents> = Layer.effectContext(Effect.gen(function*() {
  const inner = yield* WebSocketBridgeMemory.make
  let events: Array<AgentEvent> = []
  let waiters: Array<Waiter> = []

  const record = (event: AgentEvent) => {
    events.push(event)
    const ready = waiters.filter((w) => w.predicate(event))
    if (ready.length === 0) return Effect.void
    waiters = waiters.filter((w) => !ready.includes(w))
    return Effect.forEach(ready, (w) => Deferred.succeed(w.deferred, event), { discard: true })
  }

  const bridge = WebSocketBridge.of({
    register: inner.register,
    registerSync: inner.registerSync,
    unregisterSync: inner.unregisterSync,
    connectionCount: inner.connectionCount,
    emit: (event, frame) => Effect.flatMap(Effect.suspend(() => record(event)), () => inner.emit(event, frame))
  })
  const recorded = RecordedEvents.of({
    all: Effect.sync(() => [...events]),
    ofRun: (run_id) => Effect.sync(() => events.filter((e) => e.run_id === run_id)),
    waitFor: (predicate) =>
      Effect.suspend(() => {
        const found = events.find(predicate)
        if (found !== undefined) return Effect.succeed(found)
        return Effect.flatMap(Deferred.make<AgentEvent>(), (deferred) => {
          waiters.push({ predicate, deferred })
          return Deferred.await(deferred)
        })
      }),
    clear: Effect.sync(() => {
      events = []
    })
  })
  return Context.make(WebSocketBridge, bridge).pipe(Context.add(RecordedEvents, recorded))
}))
