/**
 * Load generator: one process, driven by the orchestrator over IPC. The same
 * code drives agentwire and the baseline.
 *
 * It is a minimal WebSocket client written on `net` (RFC 6455: the upgrade
 * handshake with `Sec-WebSocket-Accept` checked, masked text frames out,
 * unmasked frames in, pings answered so agentwire's heartbeat keeps the
 * sockets), not `ws`, so that the client's cost per frame stays far below the
 * server's: each chunk read is walked in place, and no frame is parsed as
 * JSON: the event type is read at a fixed byte offset (`{"type":"` is always
 * first), the `timestamp` from the frame's tail (always the last field), and
 * `request_id` with one `Buffer.indexOf` on `agent_started` frames only.
 * What remains is the kernel's: when a server writes each frame with its own
 * syscall, the client reads them about one per syscall too (the table reports
 * both processes' CPU, so a client-bound round would show).
 *
 * Latency:
 * - event latency = client `Date.now()` at receipt − the event's `timestamp`
 *   (both whole ms, same host clock): resolution 1 ms, each sample within
 *   ±1 ms of the true value;
 * - run start = `performance.now()` when `start_agent` is sent → when the
 *   matching `agent_started` (by `request_id`) arrives on any of the user's
 *   sockets: sub-ms, own bookkeeping.
 *
 * argv: <port[,port…]> <source address prefix, e.g. 127.0.1.>
 *
 * With several ports (`npm run bench -- --cluster`: one per instance), each
 * user's sockets are spread over them: the user's k-th socket goes to port
 * (k + user) mod ports, so every user with two or more sockets has sockets on
 * two instances, and the users' first (sending) sockets are spread too.
 *
 * @module
 */
import { createHash, randomBytes } from "node:crypto"
import { connect as tcpConnect, type Socket } from "node:net"
import {
  type ConnectReply,
  HIST_BUCKETS,
  type LoadCommand,
  type LoadReply,
  type RunsReply,
  signToken,
  toSparse
} from "./shared.ts"

const ports = (process.argv[2] ?? "").split(",").map(Number)
if (ports.length === 0 || ports.some((p) => !Number.isInteger(p) || p <= 0)) throw new Error(`loadgen: bad port list ${process.argv[2]}`)
const sourcePrefix = process.argv[3] ?? "127.0.0."
/**
 * Connections per source address. Binding to an address makes the kernel
 * search for a port free on it; kept well under the 28k ephemeral ports so
 * that search stays short.
 */
const PER_SOURCE = 4000
const CONNECT_CONCURRENCY = 200
const HANDSHAKE_TIMEOUT_MS = 30_000
const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

const reply = (message: LoadReply) => process.send?.(message)

// ---------------------------------------------------------------------------
// sockets

type Role = "load" | "idle"

interface Conn {
  readonly socket: Socket
  /** Frames count only in phases of the same role: runs held on idle users never pollute a load phase. */
  readonly role: Role
  /** An incomplete frame left over from the previous chunk. */
  rest: Buffer | undefined
}

/** First (sending) socket and socket count of each user of a role, by user index. */
const users: Record<Role, Array<{ sender: Conn; sockets: number }>> = { load: [], idle: [] }
const userIndex = new Map<string, number>()
const allSockets: Array<Conn> = []
const tokens = new Map<string, string>()
let socketIndex = 0

const tokenOf = async (user_id: string) => {
  let token = tokens.get(user_id)
  if (token === undefined) {
    token = await signToken(user_id)
    tokens.set(user_id, token)
  }
  return token
}

/** Sends one masked frame (FIN set): 0x1 text, 0xA pong. */
const sendFrame = (conn: Conn, opcode: number, payload: Buffer) => {
  const length = payload.length
  if (length > 0xffff) throw new Error("frame too large for this client")
  const header = length < 126
    ? Buffer.from([0x80 | opcode, 0x80 | length])
    : Buffer.from([0x80 | opcode, 0x80 | 126, length >> 8, length & 0xff])
  const mask = randomBytes(4)
  const masked = Buffer.allocUnsafe(length)
  for (let i = 0; i < length; i++) masked[i] = payload[i]! ^ mask[i & 3]!
  conn.socket.write(Buffer.concat([header, mask, masked]))
}

const sendText = (conn: Conn, text: string) => sendFrame(conn, 0x1, Buffer.from(text, "utf8"))

// ---------------------------------------------------------------------------
// the current measurement phase

interface Phase {
  readonly role: Role
  frames: number
  expected: number
  hist: Uint32Array
  pending: Map<string, number>
  startLatency: Array<number>
  done: (() => void) | undefined
}

const newPhase = (role: Role): Phase => ({
  role,
  frames: 0,
  expected: Number.POSITIVE_INFINITY,
  hist: new Uint32Array(HIST_BUCKETS),
  pending: new Map(),
  startLatency: [],
  done: undefined
})
let phase = newPhase("load")

const DAY = 86_400_000
const d2 = (b: Buffer, i: number) => (b[i]! - 48) * 10 + b[i + 1]! - 48
const REQUEST_ID = Buffer.from("\"request_id\":\"")
const TIMESTAMP = Buffer.from("\"timestamp\":\"")

/** Milliseconds of the UTC day of the ISO timestamp starting at `i`. */
const msOfDay = (b: Buffer, i: number) =>
  d2(b, i + 11) * 3_600_000 + d2(b, i + 14) * 60_000 + d2(b, i + 17) * 1000 + (b[i + 20]! - 48) * 100 + d2(b, i + 21)

/** One text frame: `data[start, end)` is its payload. */
const onFrame = (conn: Conn, data: Buffer, start: number, end: number) => {
  const p = phase
  // {"type":"agent_... : byte 9 is the type's first letter
  if (conn.role !== p.role || end - start < 40 || data[start + 9] !== 0x61) return
  const now = Date.now()
  p.frames++
  // ..."timestamp":"2026-01-01T00:00:00.000Z"}  (24 characters, then `"}`)
  let at = end - 26
  if (data[at - 1] !== 0x22 || data[at + 10] !== 0x54 || data[at + 23] !== 0x5a) {
    const found = data.subarray(start, end).lastIndexOf(TIMESTAMP)
    at = found < 0 ? -1 : start + found + TIMESTAMP.length
  }
  if (at >= 0) {
    const latency = (now % DAY - msOfDay(data, at) + DAY) % DAY
    p.hist[latency < HIST_BUCKETS ? latency : HIST_BUCKETS - 1]!++
  }
  // agent_started: byte 15 is "s"
  if (data[start + 15] === 0x73 && p.pending.size > 0) {
    const i = data.indexOf(REQUEST_ID, start + 16)
    if (i >= 0 && i < end) {
      const from = i + REQUEST_ID.length
      const id = data.toString("latin1", from, data.indexOf(0x22, from))
      const sentAt = p.pending.get(id)
      if (sentAt !== undefined) {
        p.pending.delete(id)
        p.startLatency.push(performance.now() - sentAt)
      }
    }
  }
  if (p.frames >= p.expected && p.done !== undefined) {
    const done = p.done
    p.done = undefined
    done()
  }
}

/** Walks every complete frame of `chunk` (after what was left from the last one) in place. */
const onData = (conn: Conn, chunk: Buffer) => {
  const data = conn.rest === undefined ? chunk : Buffer.concat([conn.rest, chunk])
  let offset = 0
  for (;;) {
    const available = data.length - offset
    if (available < 2) break
    const short = data[offset + 1]! & 0x7f
    let header = 2
    let length = short
    if (short === 126) {
      if (available < 4) break
      length = data.readUInt16BE(offset + 2)
      header = 4
    } else if (short === 127) {
      if (available < 10) break
      length = Number(data.readBigUInt64BE(offset + 2))
      header = 10
    }
    if (available < header + length) break
    // servers send this client no fragments or binary frames; agentwire's heartbeat pings must be answered
    const opcode = data[offset]! & 0x0f
    if (opcode === 0x1) onFrame(conn, data, offset + header, offset + header + length)
    else if (opcode === 0x9) sendFrame(conn, 0xa, data.subarray(offset + header, offset + header + length))
    offset += header + length
  }
  conn.rest = offset < data.length ? data.subarray(offset) : undefined
}

const open = (token: string, index: number, role: Role, port: number) =>
  new Promise<Conn>((resolve, reject) => {
    const key = randomBytes(16).toString("base64")
    const accept = createHash("sha1").update(key + WS_GUID).digest("base64")
    const socket = tcpConnect({ host: "127.0.0.1", port, localAddress: `${sourcePrefix}${1 + Math.floor(index / PER_SOURCE)}` })
    socket.setNoDelay(true)
    const conn: Conn = { socket, role, rest: undefined }
    let head: Buffer | undefined
    let settled = false
    const fail = (error: Error) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      reject(error)
    }
    const timer = setTimeout(() => fail(new Error("handshake timed out")), HANDSHAKE_TIMEOUT_MS)
    socket.once("connect", () => {
      socket.write(
        `GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer ${token}\r\n\r\n`
      )
    })
    socket.on("data", (chunk: Buffer) => {
      if (settled) return onData(conn, chunk)
      head = head === undefined ? chunk : Buffer.concat([head, chunk])
      const end = head.indexOf("\r\n\r\n")
      if (end < 0) return
      const response = head.toString("latin1", 0, end)
      if (!response.startsWith("HTTP/1.1 101")) return fail(new Error(`handshake refused: ${response.split("\r\n")[0]}`))
      const acceptLine = response.split("\r\n").find((line) => line.toLowerCase().startsWith("sec-websocket-accept:"))
      if (acceptLine?.slice("sec-websocket-accept:".length).trim() !== accept) {
        return fail(new Error("handshake: wrong or missing Sec-WebSocket-Accept"))
      }
      settled = true
      clearTimeout(timer)
      resolve(conn)
      if (end + 4 < head.length) onData(conn, head.subarray(end + 4))
    })
    socket.on("error", (error) => fail(error))
    socket.on("close", () => fail(new Error("closed during the handshake")))
  })

const connect = async (command: Extract<LoadCommand, { cmd: "connect" }>): Promise<ConnectReply> => {
  const t0 = performance.now()
  let next = 0
  let opened = 0
  let failed = 0
  let error: string | undefined
  const worker = async () => {
    while (next < command.count) {
      const i = next++
      const user_id = `u${command.userBase + (i % command.users)}`
      // the user's k-th socket of this batch (k = floor(i / users)) on port (k + user) mod ports
      const port = ports[(Math.floor(i / command.users) + (i % command.users)) % ports.length]!
      try {
        const ws = await open(await tokenOf(user_id), socketIndex++, command.role, port)
        opened++
        const list = users[command.role]
        const known = userIndex.get(user_id)
        if (known === undefined) {
          userIndex.set(user_id, list.length)
          list.push({ sender: ws, sockets: 1 })
        } else {
          list[known]!.sockets++
        }
        allSockets.push(ws)
      } catch (e) {
        failed++
        error ??= e instanceof Error ? e.message : String(e)
        // stop early: a refused or failing handshake will not get better
        if (failed >= 20) next = command.count
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONNECT_CONCURRENCY, command.count) }, worker))
  return {
    id: command.id,
    ok: failed === 0,
    opened,
    failed,
    ms: performance.now() - t0,
    ...(error === undefined ? {} : { error })
  }
}

// ---------------------------------------------------------------------------
// runs

let requestSeq = 0

const startRun = (role: Role, user: number, request: string, userLimit = Number.POSITIVE_INFINITY) => {
  const request_id = `r${++requestSeq}`
  const list = users[role]
  if (list.length === 0) throw new Error(`no ${role} connections to start runs from`)
  const entry = list[user % Math.min(list.length, userLimit)]!
  phase.pending.set(request_id, performance.now())
  sendText(entry.sender, `{"type":"start_agent","agent":"ticker","user_request":"${request}","request_id":"${request_id}"}`)
  return entry.sockets
}

/** Waits for the phase's expected frames, at most `timeoutMs`. */
const settle = (p: Phase, timeoutMs: number) =>
  new Promise<boolean>((resolve) => {
    if (p.frames >= p.expected) return resolve(true)
    const timer = setTimeout(() => {
      p.done = undefined
      resolve(false)
    }, timeoutMs)
    p.done = () => {
      clearTimeout(timer)
      resolve(true)
    }
  })

const finish = (id: number, p: Phase, ok: boolean, t0: number, cpu0: NodeJS.CpuUsage, runsStarted: number): RunsReply => {
  const cpu = process.cpuUsage(cpu0)
  return {
    id,
    ok,
    ...(ok ? {} : { error: `timed out: ${p.frames} of ${p.expected} frames` }),
    frames: p.frames,
    expectedFrames: p.expected,
    elapsedMs: performance.now() - t0,
    runsStarted,
    eventLatency: toSparse(p.hist),
    startLatency: p.startLatency,
    clientCpuMs: (cpu.user + cpu.system) / 1000
  }
}

const burst = async (command: Extract<LoadCommand, { cmd: "burst" }>): Promise<RunsReply> => {
  const p = newPhase("load")
  phase = p
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  let expected = 0
  const request = `steps=${command.steps} interval_ms=0`
  for (let i = 0; i < command.runs; i++) expected += startRun("load", i, request) * (command.steps + 2)
  p.expected = expected
  const ok = await settle(p, command.timeoutMs)
  return finish(command.id, p, ok, t0, cpu0, command.runs)
}

const load = async (command: Extract<LoadCommand, { cmd: "load" }>): Promise<RunsReply> => {
  const p = newPhase("load")
  phase = p
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const request = `steps=${command.steps} interval_ms=${command.intervalMs ?? 0}`
  const userLimit = command.users ?? Number.POSITIVE_INFINITY
  let started = 0
  let expected = 0
  let user = 0
  await new Promise<void>((resolve) => {
    const tick = () => {
      const elapsed = performance.now() - t0
      const due = Math.min(Math.floor((elapsed / 1000) * command.runsPerSecond), Math.floor((command.durationMs / 1000) * command.runsPerSecond))
      while (started < due) {
        expected += startRun("load", user++, request, userLimit) * (command.steps + 2)
        started++
      }
      if (elapsed >= command.durationMs) resolve()
      else setTimeout(tick, 1)
    }
    tick()
  })
  p.expected = expected
  const ok = await settle(p, command.timeoutMs)
  return finish(command.id, p, ok, t0, cpu0, started)
}

/** Runs are held on the idle users (whose frames never count in a load phase), one per user. */
const hold = async (command: Extract<LoadCommand, { cmd: "hold" }>): Promise<RunsReply> => {
  const p = newPhase("idle")
  phase = p
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  // agent_started and the first step now, the second step in a minute: the run sleeps in between
  let expected = 0
  for (let i = 0; i < command.runs; i++) expected += startRun("idle", i, "steps=2 interval_ms=60000") * 2
  p.expected = expected
  const ok = await settle(p, command.timeoutMs)
  phase = newPhase("load")
  return finish(command.id, p, ok, t0, cpu0, command.runs)
}

// ---------------------------------------------------------------------------

process.on("disconnect", () => process.exit(0))
process.on("message", (message: LoadCommand) => {
  const run = async (): Promise<LoadReply | undefined> => {
    switch (message.cmd) {
      case "connect":
        return connect(message)
      case "burst":
        return burst(message)
      case "load":
        return load(message)
      case "hold":
        return hold(message)
      case "exit":
        process.exit(0)
    }
  }
  run().then(
    (out) => {
      if (out !== undefined) reply(out)
    },
    (e: unknown) => {
      reply({ id: message.id, ok: false, opened: 0, failed: 0, ms: 0, error: e instanceof Error ? e.message : String(e) })
    }
  )
})
process.send?.({ id: 0, ok: true, opened: 0, failed: 0, ms: 0 })
