/**
 * The one write path of a WebSocket connection, and the process-wide budget of
 * unsent bytes.
 *
 * Every frame a connection sends (run events from the bridge, replies, errors,
 * `connection_established`) goes through `SocketOutput.send`, which carries
 * every policy:
 * - **per-socket bound**: when the memory already waiting plus the frame about to
 *   be written exceed `maxSocketBytes` (bytes plus `FRAME_OVERHEAD_BYTES` per
 *   queued frame), even once what the tick held back (corked) was flushed, the
 *   socket is destroyed at once (`slow_consumer`; a frame bigger than the
 *   bound itself is written when nothing else waits): its buffers are released, the frame is dropped, and the
 *   client sees the connection drop (1006) and recovers by reconnecting. A
 *   close frame would wait behind the megabytes the client is not reading.
 * - **process budget**: sockets holding more than `TRACK_BYTES` unsent are
 *   tracked by the shared `OutputBudget`; when their total exceeds
 *   `maxProcessBytes`, the socket with the most unsent bytes is destroyed first
 *   (`slow_consumer`, limit `process`), until the total fits.
 * - **corking**: the TCP socket is corked on the first frame of a tick and
 *   uncorked on the next tick, so a tick's frames leave in one write (flushed
 *   early once 64 KiB wait, or a quarter of the per-socket bound when that is
 *   smaller, per-frame overhead included: a burst to a reader that keeps up
 *   never holds its socket near the bound).
 * - **backpressure on the reader**: `backedUp()` is true while more than
 *   `HIGH_WATER_BYTES` wait (per-frame overhead included); the connection stops
 *   handling that socket's frames until `drained` resumes.
 *
 * Nothing here throws: every call into `ws` and the TCP socket is guarded.
 *
 * @module
 */
import { Effect } from "effect"
import { utf8Length } from "../protocol/FrameBytes.ts"

/** Why the server ended a connection (logged as `reason`). */
export type CloseReason =
  | "slow_consumer"
  | "heartbeat_timeout"
  | "token_expired"
  | "server_shutdown"
  | "replaced"
  | "protocol_error"
  | "server_error"

/**
 * Memory a queued frame costs beyond its bytes (write requests, buffer
 * objects), counted against both bounds: 200,000 queued frames of 228 bytes
 * raised RSS by 92 MiB for 40.5 MiB of bytes, about 270 bytes per frame
 * (`bench/frame-overhead.ts`, Node 24).
 */
export const FRAME_OVERHEAD_BYTES = 256

/** Unsent bytes above which a socket counts against the process budget. */
export const TRACK_BYTES = 64 * 1024

/**
 * Memory waiting to be sent (bytes plus `FRAME_OVERHEAD_BYTES` per queued
 * frame, as the bounds count it) above which the connection stops handling the
 * client's frames (a quarter of the per-socket bound when that is smaller), so
 * that replies alone never reach the bound: a client that floods without
 * reading is slowed down, not dropped.
 */
export const HIGH_WATER_BYTES = 256 * 1024

/**
 * Frames queued in one tick are written together, in writes of at most about
 * this many bytes (per-frame overhead counted; a quarter of the per-socket
 * bound when that is smaller, see `corkFlushBytes`).
 */
export const CORK_FLUSH_BYTES = 64 * 1024

/**
 * Memory (bytes plus `FRAME_OVERHEAD_BYTES` per queued frame) at which a corked
 * socket is flushed early: `CORK_FLUSH_BYTES`, or a quarter of `maxSocketBytes`
 * when that is smaller, so that what a tick holds back stays well under the
 * bound (at the smallest bound, 64 KiB, frames of a few hundred bytes crossed
 * it before 64 KiB of bytes were held).
 */
export const corkFlushBytes = (maxSocketBytes: number): number => Math.min(CORK_FLUSH_BYTES, Math.floor(maxSocketBytes / 4))

const EMPTY = new Uint8Array(0)

/** `WebSocket.OPEN` */
const OPEN = 1

/** What the write path needs of a `ws` socket. */
export interface SendTarget {
  readonly readyState: number
  readonly bufferedAmount: number
  readonly send: (frame: string) => void
  readonly close: (code: number, reason: string) => void
  readonly terminate: () => void
}

/** What the write path needs of the TCP socket under it. */
export interface CorkableSocket {
  cork(): void
  uncork(): void
  readonly writableLength: number
  /** True when a write returned false: only then does the socket emit `drain`. */
  readonly writableNeedDrain?: boolean
  /** Used with an empty chunk as a flush barrier: its callback runs once everything written before it left. */
  write?(chunk: Uint8Array, callback: () => void): unknown
  once(event: "drain" | "close", listener: () => void): unknown
  off(event: "drain" | "close", listener: () => void): unknown
}

/** The write path's bounds, in bytes. */
export interface OutputLimits {
  /** Unsent bytes one socket may hold (frame about to be written included). */
  readonly maxSocketBytes: number
}

/**
 * The write path's bounds for a server whose sockets may hold `maxSocketBytes`
 * each and `maxProcessBytes` together: one socket's bound is at most the
 * process budget. A bound above the budget is never reached (the budget drops
 * the socket first), while the marks derived from it (the high-water mark, the
 * cork flush, the replay page) would sit above the budget: with
 * `AGENTWIRE_PROCESS_BUFFER_BYTES=65536` and the default 8 MiB socket bound, a
 * client flooding without reading was dropped (`limit=process`) before the
 * 256 KiB high-water mark could slow it down.
 */
export const limitsFor = (maxSocketBytes: number, maxProcessBytes: number): OutputLimits => ({
  maxSocketBytes: Math.min(maxSocketBytes, maxProcessBytes)
})

/** One connection's write path. */
export interface SocketOutput {
  /** Writes one encoded frame, or drops it when the socket is not open or over its bound. */
  readonly send: (frame: string) => void
  /** Closes with `code` after the frames already queued (used at shutdown and for protocol closes). */
  readonly close: (code: number, text: string, reason: CloseReason) => void
  /** Destroys the socket at once, releasing its buffers. */
  readonly destroy: (reason: CloseReason) => void
  /** Memory waiting to be sent: bytes plus the overhead of the queued frames. */
  readonly buffered: () => number
  /** True while more than `HIGH_WATER_BYTES` (or a quarter of the bound) wait, per-frame overhead included. */
  readonly backedUp: () => boolean
  /** Resumes once the output is no longer backed up (or the socket closed). */
  readonly drained: Effect.Effect<void>
  /** Resumes once every byte written so far left the process (at once when none waits); a closed socket resumes it too. */
  readonly flushed: Effect.Effect<void>
  /** Why the server ended this connection, if it did. */
  readonly closeReason: () => CloseReason | undefined
  /** Which limit a `slow_consumer` close hit. */
  readonly limit: () => "socket" | "process" | undefined
  /** Stops tracking the socket (it closed). */
  readonly release: () => void
}

/**
 * The process-wide budget of unsent bytes, shared by every connection of a
 * server. Only sockets holding more than `TRACK_BYTES` are tracked, with the
 * unsent bytes last seen; the exact total is re-read only when the tracked
 * total exceeds the budget.
 */
export interface OutputBudget {
  readonly maxProcessBytes: number
  /** Tracked unsent bytes (an upper bound between re-reads). */
  readonly tracked: () => number
  /** Sockets currently tracked. */
  readonly trackedSockets: () => number
  /** Sockets dropped to keep the total within budget since the server started. */
  readonly dropped: () => number
  /** @internal */
  readonly note: (output: BudgetEntry, bytes: number) => void
  /** @internal */
  readonly forget: (output: BudgetEntry) => void
}

/** What the budget needs of a tracked socket. */
export interface BudgetEntry {
  readonly buffered: () => number
  readonly dropForBudget: () => void
}

/** A budget of `maxProcessBytes` unsent bytes for all sockets together. */
export const makeBudget = (maxProcessBytes: number): OutputBudget => {
  const entries = new Map<BudgetEntry, number>()
  let total = 0
  let dropped = 0
  let enforcing = false

  const set = (entry: BudgetEntry, bytes: number) => {
    total += bytes - (entries.get(entry) ?? 0)
    entries.set(entry, bytes)
  }
  const forget = (entry: BudgetEntry) => {
    const bytes = entries.get(entry)
    if (bytes === undefined) return
    total -= bytes
    entries.delete(entry)
  }
  const enforce = () => {
    if (enforcing) return
    enforcing = true
    try {
      // the tracked figures only grow between re-reads: refresh them before dropping anyone
      for (const entry of Array.from(entries.keys())) {
        const bytes = entry.buffered()
        if (bytes < TRACK_BYTES) forget(entry)
        else set(entry, bytes)
      }
      while (total > maxProcessBytes && entries.size > 0) {
        let worst: BudgetEntry | undefined
        let most = -1
        for (const [entry, bytes] of entries) {
          if (bytes > most) {
            most = bytes
            worst = entry
          }
        }
        forget(worst!)
        dropped++
        worst!.dropForBudget()
      }
    } finally {
      enforcing = false
    }
  }

  return {
    maxProcessBytes,
    tracked: () => total,
    trackedSockets: () => entries.size,
    dropped: () => dropped,
    note: (entry, bytes) => {
      if (bytes < TRACK_BYTES) return forget(entry)
      set(entry, bytes)
      if (total > maxProcessBytes) enforce()
    },
    forget
  }
}

/** Uncorks on the next tick (one function for every socket: no closure per connection). */
const uncorkLater = (output: Output) => output.uncorkNow()

/**
 * The write path of one connection. A class, so that its methods are shared by
 * every connection (an idle connection holds one object, not a dozen closures).
 */
class Output implements SocketOutput, BudgetEntry {
  private corked = false
  private reason: CloseReason | undefined = undefined
  private limitHit: "socket" | "process" | undefined = undefined
  // frames and bytes written since the socket's queue was last empty: the queue's per-frame overhead
  private queuedFrames = 0
  private queuedBytes = 0
  // whether the budget may be tracking this socket: below TRACK_BYTES the budget only forgets
  // it, so while it is not tracked the per-frame call is skipped (forgetting twice is harmless)
  private noted = false

  private readonly ws: SendTarget
  private readonly socket: CorkableSocket | undefined
  private readonly limits: OutputLimits
  private readonly budget: OutputBudget | undefined
  // corkFlushBytes(limits.maxSocketBytes), computed once: `send` compares against it
  private readonly flushAt: number

  constructor(ws: SendTarget, socket: CorkableSocket | undefined, limits: OutputLimits, budget: OutputBudget | undefined) {
    this.ws = ws
    this.socket = socket
    this.limits = limits
    this.budget = budget
    this.flushAt = corkFlushBytes(limits.maxSocketBytes)
  }

  /** `bytes` unsent bytes plus the overhead of the frames still queued (assumed spread evenly over the bytes). */
  private withOverhead(bytes: number): number {
    if (bytes === 0 || this.queuedBytes === 0) return bytes
    return bytes + Math.round(this.queuedFrames * Math.min(1, bytes / this.queuedBytes)) * FRAME_OVERHEAD_BYTES
  }

  /** Unsent bytes plus the overhead of the frames still queued. */
  buffered(): number {
    return this.withOverhead(this.ws.bufferedAmount)
  }

  private noteBudget(): void {
    if (this.budget === undefined) return
    const bytes = this.buffered()
    if (bytes < TRACK_BYTES && !this.noted) return
    this.noted = bytes >= TRACK_BYTES
    this.budget.note(this, bytes)
  }

  /** @internal */
  uncorkNow(): void {
    this.corked = false
    try {
      this.socket?.uncork()
    } catch {
      // a destroyed socket has nothing left to flush
    }
  }

  destroy(why: CloseReason): void {
    if (this.reason === undefined) this.reason = why
    if (this.budget !== undefined) this.budget.forget(this)
    try {
      this.ws.terminate()
    } catch {
      // already gone
    }
  }

  /** @internal */
  dropForBudget(): void {
    this.limitHit ??= "process"
    this.destroy("slow_consumer")
  }

  /**
   * The frame of `size` bytes would cross the bound: whether it still does once
   * the frames this tick held back (corked) were handed to the kernel. A reader
   * that keeps up takes them, and then nothing waits; a frame bigger than the
   * bound itself (an event echoing a request of `max_message_bytes`, at the
   * smallest bound) is written when nothing else waits. A reader that is
   * behind leaves them waiting: over the bound, as before.
   */
  private overBound(size: number): boolean {
    const socket = this.socket
    if (this.corked && socket !== undefined) {
      try {
        socket.uncork()
        socket.cork()
      } catch {
        // a destroyed socket: what waits is looked at below
      }
    }
    const unsent = this.ws.bufferedAmount
    if (unsent === 0) {
      this.queuedFrames = 0
      this.queuedBytes = 0
      return false
    }
    return this.withOverhead(unsent) + size + FRAME_OVERHEAD_BYTES > this.limits.maxSocketBytes
  }

  send(frame: string): void {
    const ws = this.ws
    if (ws.readyState !== OPEN) return
    const unsent = ws.bufferedAmount
    if (unsent === 0) {
      this.queuedFrames = 0
      this.queuedBytes = 0
    }
    // the bridge hands one string to all of a user's sockets, after the run log measured it: computed once
    const size = utf8Length(frame)
    // the bound counts the frame about to be written: nothing is queued past it (looked at again
    // once what this tick held back was flushed: see overBound)
    if (this.withOverhead(unsent) + size + FRAME_OVERHEAD_BYTES > this.limits.maxSocketBytes && this.overBound(size)) {
      this.limitHit ??= "socket"
      return this.destroy("slow_consumer")
    }
    const socket = this.socket
    try {
      if (socket !== undefined && !this.corked) {
        this.corked = true
        socket.cork()
        process.nextTick(uncorkLater, this)
      }
      ws.send(frame)
      this.queuedFrames++
      this.queuedBytes += size
      // never hold more than this back (as the bound counts it, per-frame overhead included): a long
      // burst still leaves in writes of at most 64 KiB, and one to a reader that keeps up stays far
      // under the per-socket bound
      if (this.corked && socket !== undefined && socket.writableLength + this.queuedFrames * FRAME_OVERHEAD_BYTES >= this.flushAt) {
        socket.uncork()
        socket.cork()
      }
    } catch {
      return this.destroy("protocol_error")
    }
    // what this socket holds now is at most what it held plus this frame (10 bytes of header at
    // most): while that stays under TRACK_BYTES and the budget is not tracking it, skip the re-read
    if (this.noted || unsent + size + 10 + this.queuedFrames * FRAME_OVERHEAD_BYTES >= TRACK_BYTES) this.noteBudget()
  }

  backedUp(): boolean {
    // the memory waiting as the bounds count it (bytes plus per-frame overhead): a flood of tiny
    // replies is held to the mark like one of large ones
    return this.socket !== undefined && this.ws.readyState === OPEN &&
      this.buffered() > Math.min(HIGH_WATER_BYTES, Math.floor(this.limits.maxSocketBytes / 4))
  }

  get drained(): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      const socket = this.socket
      if (!this.backedUp() || socket === undefined) return resume(Effect.void)
      let resumed = false
      const done = () => {
        if (resumed) return
        resumed = true
        socket.off("drain", done)
        socket.off("close", done)
        this.noteBudget()
        resume(Effect.void)
      }
      socket.once("drain", done)
      socket.once("close", done)
      // a socket emits `drain` only after a write that returned false; when the queue grew past the
      // mark without one (several small writes under a cork), an empty write is the flush barrier
      if (socket.writableNeedDrain === false && socket.write !== undefined) {
        try {
          socket.write(EMPTY, done)
        } catch {
          done()
        }
      }
      return Effect.sync(() => {
        socket.off("drain", done)
        socket.off("close", done)
      })
    })
  }

  // everything written so far left the process: the flush barrier's callback, or at once when nothing waits
  get flushed(): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      const socket = this.socket
      if (socket === undefined || this.ws.readyState !== OPEN || socket.writableLength === 0 || socket.write === undefined) {
        return resume(Effect.void)
      }
      let resumed = false
      const done = () => {
        if (resumed) return
        resumed = true
        socket.off("close", done)
        this.noteBudget()
        resume(Effect.void)
      }
      socket.once("close", done)
      try {
        socket.write(EMPTY, done)
      } catch {
        done()
      }
      return Effect.sync(() => socket.off("close", done))
    })
  }

  close(code: number, text: string, why: CloseReason): void {
    if (this.reason === undefined) this.reason = why
    try {
      if (this.ws.readyState === OPEN) this.ws.close(code, text)
    } catch {
      this.destroy(why)
    }
  }

  closeReason(): CloseReason | undefined {
    return this.reason
  }

  limit(): "socket" | "process" | undefined {
    return this.limitHit
  }

  release(): void {
    this.budget?.forget(this)
  }
}

/**
 * Builds the write path of one connection. Its methods are shared (call them
 * on the object: `output.send(frame)`, not a detached `send`).
 */
export const make = (
  ws: SendTarget,
  socket: CorkableSocket | undefined,
  limits: OutputLimits,
  budget?: OutputBudget
): SocketOutput => new Output(ws, socket, limits, budget)
