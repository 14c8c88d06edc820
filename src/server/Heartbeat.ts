/**
 * The heartbeat's judgement of one connection: alive, or dead (no progress).
 *
 * Every sweep the server observes each socket (`Observation`) and calls
 * `judge`. A socket is alive when, since the previous sweep, it answered the
 * outstanding ping, sent anything, drained part of a userland backlog, or had
 * frames handled while the server itself held its reading paused.
 *
 * Otherwise its ping may simply be queued behind megabytes the client is still
 * reading out of the kernel's buffers, where Node cannot see progress. So a
 * ping is only overdue after one interval plus the time the bytes sent ahead of
 * it take at `MIN_DRAIN_BYTES_PER_SECOND`: a client reading at least that fast
 * is never taken for dead; one that reads nothing is dropped once that time
 * has passed (or sooner by the slow-consumer bounds, when its backlog grows).
 * One ping is outstanding at a time.
 *
 * @module
 */

/** The slowest read rate the heartbeat waits for, in bytes per second (a 256 kbit/s link). */
export const MIN_DRAIN_BYTES_PER_SECOND = 32 * 1024

/** What the server sees of a socket at one sweep. */
export interface Observation {
  /** Milliseconds, from the clock the sweeps use. */
  readonly at: number
  /** A pong arrived since the last ping was sent. */
  readonly pong: boolean
  readonly bytesRead: number
  /** Bytes the kernel took so far. */
  readonly dispatched: number
  /** Bytes still queued in Node. */
  readonly backlog: number
  /** Client frames handled so far. */
  readonly handled: number
  /** The server paused reading because the connection's inbox is full. */
  readonly pausedForInbox: boolean
}

/** What the heartbeat remembers of a socket between sweeps. */
export interface State {
  readonly previous: Observation
  /** When the outstanding ping was sent. */
  readonly pingAt: number
  /** Bytes sent ahead of the outstanding ping that the client had not confirmed reading. */
  readonly bytesAhead: number
  /** Bytes sent (dispatched + backlog) when the last answered ping was sent. */
  readonly confirmedMark: number
  /** Bytes sent when the outstanding ping was sent. */
  readonly pingMark: number
}

/** The verdict of one sweep: dead, or alive with the state to keep (and whether to send a new ping). */
export type Verdict =
  | { readonly _tag: "Dead" }
  | { readonly _tag: "Alive"; readonly ping: boolean; readonly state: State }

const sentMark = (o: Observation) => o.dispatched + o.backlog

const pinged = (o: Observation, confirmedMark: number): Verdict => ({
  _tag: "Alive",
  ping: true,
  state: { previous: o, pingAt: o.at, pingMark: sentMark(o), confirmedMark, bytesAhead: sentMark(o) - confirmedMark }
})

/** Judges a socket at one sweep, `intervalMs` after the previous one. */
export const judge = (state: State | undefined, o: Observation, intervalMs: number): Verdict => {
  // nothing is confirmed before the first pong: every byte sent so far is ahead of the first ping
  if (state === undefined) return pinged(o, 0)
  // the outstanding ping was answered: the client read everything sent before it
  if (o.pong) return pinged(o, state.pingMark)
  const p = state.previous
  const progressed = o.bytesRead !== p.bytesRead ||
    (p.backlog > 0 && o.dispatched !== p.dispatched) ||
    (o.pausedForInbox && o.handled !== p.handled)
  if (progressed) return { _tag: "Alive", ping: false, state: { ...state, previous: o } }
  const allowance = intervalMs + (state.bytesAhead / MIN_DRAIN_BYTES_PER_SECOND) * 1000
  if (o.at - state.pingAt > allowance) return { _tag: "Dead" }
  return { _tag: "Alive", ping: false, state: { ...state, previous: o } }
}
