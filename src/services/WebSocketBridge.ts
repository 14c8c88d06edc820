/**
 * WebSocketBridge: the only way agent events reach users.
 *
 * Keeps the registry of live connections per user. `emit` delivers one event to
 * every live connection of the event's `user_id`, in emit order, and to nobody
 * else. Implementations: `layers/WebSocketBridgeMemory.ts` (one process) and
 * `layers/WebSocketBridgeRecording.ts` (a test double that records events).
 *
 * @module
 */
import { Context, type Effect, type Scope } from "effect"
import type { AgentEvent } from "../protocol/Protocol.ts"

/** One live client connection as the bridge sees it: an id, its user, and a way to send text. */
export interface BridgeConnection {
  readonly id: string
  readonly user_id: string
  /**
   * Sends one already-encoded frame; `event` is the agent event it encodes
   * (absent for frames that are not agent events). Must not throw; a dead
   * socket drops it.
   */
  readonly send: (frame: string, event?: AgentEvent) => void
}

export class WebSocketBridge extends Context.Service<WebSocketBridge, {
  /** Registers a connection until the surrounding scope closes. */
  readonly register: (connection: BridgeConnection) => Effect.Effect<void, never, Scope.Scope>
  /**
   * The same registration as two plain synchronous calls, for bridges whose
   * registration needs no I/O (the in-memory one): a connection then needs no
   * scope (nor fiber) while it is idle. `unregisterSync` of a connection that
   * is not registered does nothing. Bridges that need I/O leave both out.
   */
  readonly registerSync?: ((connection: BridgeConnection) => void) | undefined
  readonly unregisterSync?: ((connection: BridgeConnection) => void) | undefined
  /**
   * Delivers one event to every live connection of `event.user_id`, encoded
   * once (`frame`, when given, is that encoding: the run emitter encodes each
   * event once for the log and the bridge).
   */
  readonly emit: (event: AgentEvent, frame?: string) => Effect.Effect<void>
  /**
   * The same delivery as a plain synchronous call, for bridges that deliver
   * synchronously (the in-memory one). When present, run emitters stamp and
   * deliver in one synchronous step, with no lock; bridges that need I/O leave
   * it out and emits of a run are serialised instead.
   */
  readonly deliverSync?: ((event: AgentEvent, frame?: string) => void) | undefined
  /** Live connections of one user, or of everyone when `user_id` is omitted. */
  readonly connectionCount: (user_id?: string) => Effect.Effect<number>
}>()("agentwire/WebSocketBridge") {}
