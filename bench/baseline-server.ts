/**
 * The baseline: the smallest honest raw `ws` server that does agentwire's work
 * on the wire for the bench's traffic, and nothing more.
 *
 * - `GET /ws` only; the token from `Authorization: Bearer` or `?token=`,
 *   verified with `jose` HS256 (`sub` = user id) before the upgrade; 401 otherwise.
 * - `connection_established` first, then every event of a user's runs to every
 *   socket of that user.
 * - `start_agent` for `ticker` (`steps=N interval_ms=M`): the same events with
 *   the same fields, field order and sizes as agentwire's (`agent_started`,
 *   N × `agent_thinking`, `agent_completed`), each stamped with `seq` and an
 *   ISO `timestamp`, `JSON.stringify`-ed once and sent to each socket; with
 *   M > 0 the steps are `setTimeout`s apart. `ping` gets `pong`.
 * - The same slow-client guard (close 1013 above 8 MiB buffered), no
 *   compression, the same `maxPayload`.
 * - With `BASELINE_CORK=1` (the default), the same per-tick corking as
 *   agentwire's per-socket send (`makeSend` in src/server/WebSocketConnection.ts):
 *   the TCP socket is corked on its first frame of a tick and uncorked on
 *   `process.nextTick`, with an early flush every 64 KiB, so the frames a tick
 *   sends to one socket leave in one `writev`. `BASELINE_CORK=0` writes every
 *   frame with its own `ws.send` (one syscall per frame per socket).
 *
 * No logging, no schema validation of frames (client frames are `JSON.parse`d
 * and checked for the three fields the bench sends), no runtime, no fibers,
 * no interruption, no shutdown protocol, no heartbeat, no limits on runs.
 *
 * Env: BASELINE_HOST, BASELINE_PORT, BASELINE_JWT_SECRET, BASELINE_MAX_MESSAGE_BYTES,
 * BASELINE_CORK (1, 0, or `immediate`: uncork on `setImmediate` instead, so frames of all the
 * timers that fire in one event-loop iteration share a write; an experiment, not the baseline).
 *
 * @module
 */
import { tickerRun } from "./baseline-ticker.ts"
import { jwtVerify } from "jose"
import { createServer, type IncomingMessage } from "node:http"
import type { Socket } from "node:net"
import type { Duplex } from "node:stream"
import { type WebSocket, WebSocketServer } from "ws"

const host = process.env.BASELINE_HOST ?? "127.0.0.1"
const port = Number(process.env.BASELINE_PORT ?? "8090")
const key = new TextEncoder().encode(process.env.BASELINE_JWT_SECRET ?? "")
const maxPayload = Number(process.env.BASELINE_MAX_MESSAGE_BYTES ?? "65536")
const MAX_BUFFERED_BYTES = 8 * 1024 * 1024
const CORK_FLUSH_BYTES = 64 * 1024
/** "1" (default): uncork on `process.nextTick`; "immediate": on `setImmediate` (an experiment); "0": no corking. */
const corkMode = process.env.BASELINE_CORK ?? "1"
const cork = corkMode !== "0"
const schedule: (f: () => void) => void = corkMode === "immediate" ? setImmediate : process.nextTick
const ID = /^[A-Za-z0-9._:-]{1,128}$/

/** One socket of a user, with its send (corked per tick or not). */
interface Conn {
  readonly ws: WebSocket
  readonly send: (frame: string) => void
}

const byUser = new Map<string, Array<Conn>>()
const newId = (prefix: string) => `${prefix}_${crypto.randomUUID().replaceAll("-", "")}`

/** The per-socket send: drop when not open, close a slow client, and (when corking) cork for the rest of the tick. */
const makeSend = (ws: WebSocket, socket: Socket): (frame: string) => void => {
  if (!cork) {
    return (frame) => {
      if (ws.readyState !== ws.OPEN) return
      if (ws.bufferedAmount > MAX_BUFFERED_BYTES) ws.close(1013, "client too slow: send buffer full")
      else ws.send(frame)
    }
  }
  let corked = false
  const uncork = () => {
    corked = false
    socket.uncork()
  }
  return (frame) => {
    if (ws.readyState !== ws.OPEN) return
    if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
      ws.close(1013, "client too slow: send buffer full")
      return
    }
    if (!corked) {
      corked = true
      socket.cork()
      schedule(uncork)
    }
    ws.send(frame)
    if (socket.writableLength >= CORK_FLUSH_BYTES) {
      socket.uncork()
      socket.cork()
    }
  }
}

/** One `JSON.stringify` per event, the same string sent to each of the user's sockets. */
const deliver = (user_id: string, event: object) => {
  const conns = byUser.get(user_id)
  if (conns === undefined) return
  const frame = JSON.stringify(event)
  for (let i = 0; i < conns.length; i++) conns[i]!.send(frame)
}

const accept = (ws: WebSocket, user_id: string, socket: Socket) => {
  const conn: Conn = { ws, send: makeSend(ws, socket) }
  const conns = byUser.get(user_id)
  if (conns === undefined) byUser.set(user_id, [conn])
  else conns.push(conn)
  ws.on("close", () => {
    const list = byUser.get(user_id)
    if (list === undefined) return
    const i = list.indexOf(conn)
    if (i >= 0) list.splice(i, 1)
    if (list.length === 0) byUser.delete(user_id)
  })
  ws.on("error", () => {})
  ws.on("message", (data, isBinary) => {
    if (isBinary) return
    let message: { type?: unknown; agent?: unknown; user_request?: unknown; request_id?: unknown }
    try {
      message = JSON.parse((data as Buffer).toString("utf8"))
    } catch {
      return
    }
    if (message.type === "ping") {
      ws.send(JSON.stringify({ type: "pong", timestamp: new Date().toISOString() }))
    } else if (message.type === "start_agent" && message.agent === "ticker" && typeof message.user_request === "string") {
      tickerRun(user_id, message.user_request, typeof message.request_id === "string" ? message.request_id : undefined, (event) => deliver(user_id, event))
    }
  })
  ws.send(JSON.stringify({
    type: "connection_established",
    connection_id: newId("conn"),
    user_id,
    protocol_version: 1,
    max_message_bytes: maxPayload
  }))
}

const refuse = (socket: Duplex, status: number) => {
  if (!socket.destroyed) socket.end(`HTTP/1.1 ${status} Refused\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`)
}

const wss = new WebSocketServer({ noServer: true, maxPayload, perMessageDeflate: false, clientTracking: false })
const server = createServer((_request, response) => {
  response.writeHead(404).end()
})
// one listener for all sockets: a closure here would keep each handshake's request alive with its socket
function destroyOnError(this: Duplex) {
  this.destroy()
}
server.on("upgrade", (request: IncomingMessage, socket: Duplex, head: Buffer) => {
  socket.on("error", destroyOnError)
  const url = new URL(request.url ?? "/", "http://localhost")
  if (url.pathname !== "/ws") return refuse(socket, 404)
  const bearer = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.authorization ?? "")
  const token = bearer?.[1] ?? url.searchParams.get("token")
  if (token === null || token === "") return refuse(socket, 401)
  jwtVerify(token, key, { algorithms: ["HS256"] }).then(
    ({ payload }) => {
      if (typeof payload.sub !== "string" || !ID.test(payload.sub)) return refuse(socket, 401)
      if (socket.destroyed) return
      const user_id = payload.sub
      wss.handleUpgrade(request, socket, head, (ws) => accept(ws, user_id, socket as Socket))
    },
    () => refuse(socket, 401)
  )
})
server.listen(port, host, () => {
  console.log(`baseline listening on http://${host}:${port} (${cork ? (corkMode === "immediate" ? "corked until setImmediate" : "corked per tick") : "uncorked"})`)
})
// exit normally on a signal, so that `--cpu-prof` writes its profile
for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => process.exit(0))
