/**
 * One accepted WebSocket connection, as one fiber.
 *
 * Sends `connection_established`, registers with the bridge (so the user's run
 * events reach it), then decodes client frames one at a time, in order. A bad
 * frame gets an `error` frame and the connection lives on. When the socket
 * closes, the fiber's scope closes and the bridge forgets the connection.
 *
 * Also here: where the token is taken from at the handshake, and which
 * subprotocol the server selects.
 *
 * @module
 */
import { type Cause, Effect, Queue } from "effect"
import type { IncomingMessage } from "node:http"
import type { WebSocket } from "ws"
import {
  type ClientMessage,
  decodeClientFrame,
  PROTOCOL_VERSION,
  type ProtocolError,
  type ServerMessage,
  SUBPROTOCOL
} from "../protocol/Protocol.ts"
import { bearerToken } from "../services/Auth.ts"
import { ExecutionEngineFactory } from "../services/ExecutionEngineFactory.ts"
import * as UserExecutionContext from "../services/UserExecutionContext.ts"
import { WebSocketBridge } from "../services/WebSocketBridge.ts"

/** A socket whose unsent output exceeds this is closed with 1013: it cannot keep up. */
export const MAX_BUFFERED_BYTES = 8 * 1024 * 1024

/** Frames queued in one tick are written together, in writes of at most about this many bytes. */
const CORK_FLUSH_BYTES = 64 * 1024

/** Client frames waiting to be handled before the socket stops reading (backpressure, nothing dropped). */
const INBOX_HIGH_WATER = 64
/** Reading resumes when the waiting frames fall to this. */
const INBOX_LOW_WATER = 8

const TOKEN_PROTOCOL_PREFIX = "jwt."

/** `WebSocket.OPEN` */
const OPEN = 1

const offeredProtocols = (request: IncomingMessage): Array<string> =>
  (request.headers["sec-websocket-protocol"] ?? "").split(",").map((p) => p.trim()).filter((p) => p.length > 0)

/**
 * The token of a handshake, from (in order) `Authorization: Bearer`, the
 * subprotocol `jwt.<token>`, or the `token` query parameter.
 */
export const tokenOf = (request: IncomingMessage, url: URL): string | undefined => {
  const fromHeader = bearerToken(request.headers.authorization)
  if (fromHeader !== undefined) return fromHeader
  const fromProtocol = offeredProtocols(request).find((p) => p.startsWith(TOKEN_PROTOCOL_PREFIX))
  if (fromProtocol !== undefined && fromProtocol.length > TOKEN_PROTOCOL_PREFIX.length) {
    return fromProtocol.slice(TOKEN_PROTOCOL_PREFIX.length)
  }
  const fromQuery = url.searchParams.get("token")
  return fromQuery !== null && fromQuery.length > 0 ? fromQuery : undefined
}

/**
 * `ws`'s `handleProtocols`: `agentwire.v1` when offered, else the offered
 * `jwt.<token>` echoed back (what browser clients of the seed expect), else none.
 */
export const selectProtocol = (protocols: Set<string>): string | false => {
  if (protocols.has(SUBPROTOCOL)) return SUBPROTOCOL
  for (const p of protocols) if (p.startsWith(TOKEN_PROTOCOL_PREFIX)) return p
  return false
}

/** Settings a connection needs. */
export interface ConnectionOptions {
  readonly maxMessageBytes: number
  /** The connection's TCP socket: corked while one tick's frames are queued, so they leave in one write. */
  readonly socket?: CorkableSocket
}

/** What `makeSend` needs of a `ws` socket. */
export interface SendTarget {
  readonly readyState: number
  readonly bufferedAmount: number
  readonly send: (frame: string) => void
  readonly close: (code: number, reason: string) => void
}

/** What `makeSend` needs of the TCP socket under it. */
export interface CorkableSocket {
  cork(): void
  uncork(): void
  readonly writableLength: number
}

/**
 * The bridge's per-socket send: the hot path. Drops frames for a socket that
 * is no longer open, closes with 1013 a socket that cannot keep up, and corks
 * the TCP socket for the rest of the tick so a tick's frames leave in one
 * write (flushing early every 64 KiB).
 */
export const makeSend = (ws: SendTarget, socket?: CorkableSocket): (frame: string) => void => {
  let corked = false
  const uncork = () => {
    corked = false
    socket?.uncork()
  }
  return (frame) => {
    if (ws.readyState !== OPEN) return
    if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
      ws.close(1013, "client too slow: send buffer full")
      return
    }
    if (socket !== undefined && !corked) {
      corked = true
      socket.cork()
      process.nextTick(uncork)
    }
    ws.send(frame)
    // never hold more than this back: a long burst still leaves in 64 KiB writes
    if (corked && socket !== undefined && socket.writableLength >= CORK_FLUSH_BYTES) {
      socket.uncork()
      socket.cork()
    }
  }
}

/** Runs one connection until its socket closes. */
export const run = (ws: WebSocket, user_id: string, options: ConnectionOptions) => {
  const connection_id = UserExecutionContext.generateId("conn")
  return Effect.gen(function*() {
    const bridge = yield* WebSocketBridge
    const engines = yield* ExecutionEngineFactory
    const openedAt = Date.now()
    const inbox = yield* Queue.unbounded<string | Uint8Array, Cause.Done>()
    let closeCode = 1006
    let socketError: string | undefined

    const reply = (message: ServerMessage) => {
      if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(message))
    }
    const send = makeSend(ws, options.socket)

    ws.on("message", (data, isBinary) => {
      const frame = isBinary ? new Uint8Array(data as Buffer) : (data as Buffer).toString("utf8")
      Queue.offerUnsafe(inbox, frame)
      // a client sending faster than frames are handled is slowed down by TCP, not by dropping frames
      if (Queue.sizeUnsafe(inbox) >= INBOX_HIGH_WATER) ws.pause()
    })
    ws.on("error", (error) => {
      socketError = error.message
    })
    ws.on("close", (code) => {
      closeCode = code
      Queue.endUnsafe(inbox)
    })
    // the socket may have closed before the listeners were attached
    if (ws.readyState === ws.CLOSING || ws.readyState === ws.CLOSED) Queue.endUnsafe(inbox)

    reply({
      type: "connection_established",
      connection_id,
      user_id,
      protocol_version: PROTOCOL_VERSION,
      max_message_bytes: options.maxMessageBytes
    })
    yield* bridge.register({ id: connection_id, user_id, send })
    yield* Effect.logInfo("connection opened")

    const refuse = (error: ProtocolError) => Effect.sync(() => reply(error))

    const startRun = (
      agent: string | undefined,
      request: string,
      ids: { readonly thread_id?: string | undefined; readonly request_id?: string | undefined }
    ) =>
      UserExecutionContext.make({ user_id, thread_id: ids.thread_id, request_id: ids.request_id }).pipe(
        Effect.flatMap((context) => engines.start(context, agent, request)),
        Effect.asVoid,
        Effect.catchTags({
          InvalidContextError: (e) =>
            refuse({ type: "error", code: "INVALID_MESSAGE", message: e.message, ...(ids.request_id ? { request_id: ids.request_id } : {}) }),
          UnknownAgentError: (e) =>
            refuse({ type: "error", code: "UNKNOWN_AGENT", message: e.message, ...(ids.request_id ? { request_id: ids.request_id } : {}) })
        })
      )

    const handle = (message: ClientMessage | ProtocolError): Effect.Effect<void> => {
      switch (message.type) {
        case "error":
          return refuse(message)
        case "ping":
          return Effect.sync(() => reply({ type: "pong", timestamp: new Date().toISOString() }))
        case "start_agent":
          return startRun(message.agent, message.user_request, message)
        case "user_message":
          return startRun(undefined, message.text, message)
      }
    }

    const next: Effect.Effect<void, Cause.Done> = Effect.flatMap(Queue.take(inbox), (frame) => {
      if (ws.isPaused && Queue.sizeUnsafe(inbox) <= INBOX_LOW_WATER) ws.resume()
      return typeof frame === "string"
        ? handle(decodeClientFrame(frame))
        : refuse({ type: "error", code: "INVALID_MESSAGE", message: "binary frames are not supported; send JSON text frames" })
    })
    yield* Effect.forever(next).pipe(Effect.catchTag("Done", () => Effect.void))

    yield* Effect.logInfo("connection closed").pipe(
      Effect.annotateLogs({
        code: closeCode,
        duration_ms: Date.now() - openedAt,
        ...(socketError === undefined ? {} : { error: socketError })
      })
    )
  }).pipe(
    Effect.scoped,
    Effect.onInterrupt(() => Effect.sync(() => ws.terminate())),
    Effect.annotateLogs({ user_id, connection_id })
  )
}
