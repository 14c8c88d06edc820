/**
 * Shared by every bench process: the IPC messages between the orchestrator
 * (`run.ts`), the load generators (`loadgen.ts`), the server probe
 * (`probe.ts`) and the engine micro-benchmark (`engine.ts`); histograms and
 * percentiles; tokens.
 *
 * @module
 */
import { SignJWT } from "jose"

/** HS256 secret every server of a bench run is started with (>= 32 characters). */
export const BENCH_SECRET = "agentwire-bench-secret-0123456789abcdef"

/** Signs the token of one user (`sub` = user id), valid one hour. */
export const signToken = (user_id: string): Promise<string> =>
  new SignJWT({})
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(user_id)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + 3600)
    .sign(new TextEncoder().encode(BENCH_SECRET))

// ---------------------------------------------------------------------------
// histograms

/** Event latencies are whole milliseconds (the `timestamp` has ms precision). */
export const HIST_BUCKETS = 60_001

/** Sparse form for IPC and JSON: [ms, count] pairs. */
export type SparseHistogram = ReadonlyArray<readonly [number, number]>

export const toSparse = (h: Uint32Array): SparseHistogram => {
  const out: Array<readonly [number, number]> = []
  for (let i = 0; i < h.length; i++) if (h[i]! > 0) out.push([i, h[i]!])
  return out
}

export const mergeSparse = (a: SparseHistogram, b: SparseHistogram): SparseHistogram => {
  const m = new Map<number, number>()
  for (const [k, v] of a) m.set(k, (m.get(k) ?? 0) + v)
  for (const [k, v] of b) m.set(k, (m.get(k) ?? 0) + v)
  return [...m.entries()].sort((x, y) => x[0] - y[0])
}

export interface Percentiles {
  readonly count: number
  readonly p50: number
  readonly p95: number
  readonly p99: number
  readonly max: number
}

export const histPercentiles = (h: SparseHistogram): Percentiles => {
  const count = h.reduce((s, [, v]) => s + v, 0)
  const at = (q: number) => {
    if (count === 0) return Number.NaN
    const rank = Math.ceil(q * count)
    let seen = 0
    for (const [k, v] of h) {
      seen += v
      if (seen >= rank) return k
    }
    return h[h.length - 1]![0]
  }
  return { count, p50: at(0.5), p95: at(0.95), p99: at(0.99), max: count === 0 ? Number.NaN : h[h.length - 1]![0] }
}

/** Percentiles of raw samples (sub-millisecond values kept). */
export const samplePercentiles = (samples: ReadonlyArray<number>): Percentiles => {
  const s = [...samples].sort((a, b) => a - b)
  const at = (q: number) => s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!
  return { count: s.length, p50: at(0.5), p95: at(0.95), p99: at(0.99), max: s.length === 0 ? Number.NaN : s[s.length - 1]! }
}

export const median = (xs: ReadonlyArray<number>): number => {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

// ---------------------------------------------------------------------------
// orchestrator -> load generator

export type LoadCommand =
  | {
    /** Opens `count` sockets: socket i belongs to user `u${userBase + (i % users)}`. */
    readonly cmd: "connect"
    readonly id: number
    readonly count: number
    readonly users: number
    readonly userBase: number
    /** Keep these sockets in the "load" set (the ones runs are started from and counted on). */
    readonly role: "load" | "idle"
  }
  | {
    /** Starts `runs` runs at once (one per load user, round robin) and waits for every frame. */
    readonly cmd: "burst"
    readonly id: number
    readonly runs: number
    readonly steps: number
    readonly timeoutMs: number
  }
  | {
    /**
     * Open loop: starts runs at `runsPerSecond` for `durationMs`, then waits for every frame.
     * `intervalMs` (default 0) paces each run's steps; `users` (default all) limits the runs to
     * the first that many load users, round robin.
     */
    readonly cmd: "load"
    readonly id: number
    readonly runsPerSecond: number
    readonly steps: number
    readonly intervalMs?: number
    readonly users?: number
    readonly durationMs: number
    readonly timeoutMs: number
  }
  | {
    /**
     * Starts `runs` long-sleeping runs (ticker, 2 steps a minute apart) from the idle users' sockets
     * and waits for their first step.
     */
    readonly cmd: "hold"
    readonly id: number
    readonly runs: number
    readonly timeoutMs: number
  }
  | { readonly cmd: "exit"; readonly id: number }

export interface ConnectReply {
  readonly id: number
  readonly ok: boolean
  readonly opened: number
  readonly failed: number
  readonly ms: number
  readonly error?: string
}

export interface RunsReply {
  readonly id: number
  readonly ok: boolean
  readonly error?: string
  /** Agent-event frames received on load sockets during the phase. */
  readonly frames: number
  readonly expectedFrames: number
  /** From the first `start_agent` sent to the last expected frame received. */
  readonly elapsedMs: number
  /** Offered run starts actually sent. */
  readonly runsStarted: number
  /** Event `timestamp` → receipt, whole ms (see docs/benchmarks.md for the resolution). */
  readonly eventLatency: SparseHistogram
  /** `start_agent` sent → `agent_started` received on the sending socket, ms (performance.now). */
  readonly startLatency: ReadonlyArray<number>
  /** CPU the load generator used during the phase, ms. */
  readonly clientCpuMs: number
}

export type LoadReply = ConnectReply | RunsReply

// ---------------------------------------------------------------------------
// orchestrator <-> server probe (bench/probe.ts, preloaded into both servers)

export interface ProbeCommand {
  readonly probe: "stats"
  readonly id: number
  readonly gc: boolean
  /**
   * With `gc`: a memory-reducing collection (V8's last-resort GC, which also shrinks the young
   * generation back) instead of two full ones, so RSS shows what is retained rather than how far a
   * burst of allocation grew the young generation.
   */
  readonly reduce?: boolean
  /** Start a new event-loop delay window after this reading. */
  readonly resetLoopDelay?: boolean
}

export interface ProbeReply {
  readonly id: number
  readonly rss: number
  readonly heapUsed: number
  readonly external: number
  readonly arrayBuffers: number
  /** Process CPU time so far (user + system), µs. */
  readonly cpuMicros: number
  /** The system (kernel) part of `cpuMicros`, µs. */
  readonly cpuSystemMicros: number
  /** Soft limit on open files, from /proc/self/limits. */
  readonly maxOpenFiles: number
  /** CLOCK_MONOTONIC, µs: the clock of `--cpu-prof` sample times, to cut a profile to a time window. */
  readonly monotonicMicros: number
  /** Longest event-loop delay since the last reset, ms (NaN unless BENCH_LOOP_DELAY=1). */
  readonly loopDelayMaxMs: number
  /** Bytes V8 committed for its heap (used or not), when the probe could read it. */
  readonly heapCommitted?: number
  /** The same per V8 heap space (`new_space`, `old_space`, …), physical bytes. */
  readonly heapSpaces?: Readonly<Record<string, number>>
}
