/**
 * The bench's table, its raw-results JSON (`bench/results/latest.json`, for
 * comparison across commits) and the generated part of `docs/benchmarks.md`
 * (between the `bench:results` markers; the rest of that file is prose kept
 * by hand).
 *
 * @module
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import type { EngineResult } from "./engine.ts"
import { histPercentiles, type Percentiles, samplePercentiles, type SparseHistogram } from "./shared.ts"

export interface Params {
  readonly mode: "full" | "quick" | "profile"
  readonly connections: number
  readonly users: number
  readonly runs: number
  readonly steps: number
  readonly rounds: number
  /** Paced load: connections and users (the first `pacedUsers` of the burst load's), runs per round, steps, ms between steps. */
  readonly pacedConnections: number
  readonly pacedUsers: number
  readonly pacedRuns: number
  readonly pacedSteps: number
  readonly pacedIntervalMs: number
  /** The runs of a paced round are started at an even rate over this window, ms. */
  readonly pacedSpreadMs: number
  readonly pacedRounds: number
  readonly loadMs: number
  readonly holdRuns: number
  readonly idleConnections: number
  readonly idleCap: number
  readonly idleBatch: number
  readonly idleBudgetMs: number
  readonly engineMs: number
  readonly heartbeatConnections: number
  readonly logLevel: string
}

export interface MachineInfo {
  readonly date: string
  readonly commit: string
  readonly dirty: boolean
  readonly nproc: number
  readonly cpu: string
  readonly memory: string
  readonly free: string
  readonly node: string
  readonly kernel: string
  readonly command: string
  /** How processes were pinned to CPUs (taskset), or why not. */
  readonly pinning: string
  /** `os.loadavg()` when the bench started and ended: other work on the machine. */
  readonly loadAverageAtStart: ReadonlyArray<number>
  readonly loadAverageAtEnd?: ReadonlyArray<number>
  /** The agentwire checkout measured, when not this one (`--agentwire-dir`). */
  readonly agentwireDir?: string
}

/** One open-loop phase at a fixed offered load. */
export interface FixedLoad {
  readonly offeredEventsPerSecond: number
  readonly runsPerSecond: number
  readonly deliveredEventsPerSecond: number
  readonly runsStarted: number
  readonly eventLatency: SparseHistogram
  readonly startLatency: ReadonlyArray<number>
  readonly serverCpuShare: number
}

/** The burst (fan-out) rounds of one server. */
export interface ThroughputResults {
  /** Median over the rounds. */
  readonly eventsPerSecond: number
  readonly rounds: ReadonlyArray<number>
  /** Server CPU over all rounds / frames delivered over all rounds. */
  readonly serverCpuMicrosPerEvent: number
  /** The kernel (system) part of it. */
  readonly serverSystemMicrosPerEvent: number
  /** Server write-like syscalls (`syscw`) over all rounds / frames delivered. */
  readonly writesPerEvent: number
  /** Load generator CPU / wall time during the rounds (1 = one core busy). */
  readonly clientCpuShare: number
  /** Server CPU / wall time during the rounds. */
  readonly serverCpuShare: number
}

/** One paced round of one server. */
export interface PacedRound {
  readonly frames: number
  readonly elapsedMs: number
  readonly serverCpuMicrosPerEvent: number
  /** The kernel (system) part of it. */
  readonly serverSystemMicrosPerEvent: number
  /** The main (JavaScript) thread's share of the server's CPU; the rest is GC helper and libuv threads. */
  readonly mainThreadShare: number
  readonly writesPerEvent: number
  /** Whole ms (see the latency resolution in docs/benchmarks.md). */
  readonly eventLatencyP50: number
  readonly eventLatencyP99: number
  /** `start_agent` sent → `agent_started` received, ms. */
  readonly startLatencyP99: number
  readonly serverCpuShare: number
  readonly clientCpuShare: number
}

/** The paced rounds of one server: each round, the medians over rounds, and the pooled latencies. */
export interface PacedResults {
  readonly rounds: ReadonlyArray<PacedRound>
  readonly median: PacedRound
  readonly eventLatency: SparseHistogram
  readonly startLatency: Percentiles
}

export interface ServerResults {
  readonly throughput: ThroughputResults
  readonly paced: PacedResults
  readonly saturation: {
    readonly eventLatency: SparseHistogram
    readonly startLatency: ReadonlyArray<number>
  }
  /** At 50 % of this server's own maximum. */
  readonly ownLoad: FixedLoad
  /** At 50 % of the smaller of the two maxima: the same offered load for both servers. */
  readonly sameLoad: FixedLoad
  readonly memory: {
    readonly activeRun: { readonly runs: number; readonly rssPerRun: number; readonly heapPerRun: number }
    readonly idle: {
      readonly connections: number
      readonly connectMs: number
      readonly rssBefore: number
      readonly rssPerConnection: number
      readonly heapPerConnection: number
    }
    readonly maxIdle: {
      readonly connections: number
      readonly openAtStart: number
      readonly rssAtStart: number
      readonly rssAtEnd: number
      readonly openAtEnd: number
      readonly reason: string
      readonly maxOpenFiles: number
      readonly ms: number
    }
  }
}

export interface BenchResults {
  readonly machine: MachineInfo
  readonly params: Params
  readonly agentwire: ServerResults
  /** Raw `ws`, corked per tick like agentwire. */
  readonly baseline: ServerResults
  /** Raw `ws`, one write per frame per socket: only in the burst and paced rounds. */
  readonly uncorked: { readonly throughput: ThroughputResults; readonly paced: PacedResults }
  readonly heartbeat: {
    readonly connections: number
    readonly intervalMs: number
    readonly windowMs: number
    readonly maxStallMs: number
  }
  readonly engine: EngineResult
}

// ---------------------------------------------------------------------------
// formatting

const KIB = 1024
const MIB = 1024 * 1024
const GIB = 1024 * MIB

const int = (n: number) => Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "n/a"
const fixed = (n: number, digits: number) => Number.isFinite(n) ? n.toFixed(digits) : "n/a"
const ms = (n: number) => Number.isFinite(n) ? (n < 10 ? n.toFixed(2) : n.toFixed(1)) : "n/a"
const ratio = (a: number, b: number) => Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? fixed(a / b, 2) : "n/a"
const fourWay = (p: Percentiles, f: (n: number) => string) => `${f(p.p50)} / ${f(p.p95)} / ${f(p.p99)} / ${f(p.max)}`
const wholeMs = (n: number) => Number.isFinite(n) ? String(n) : "n/a"
const mark = (ok: boolean) => ok ? "met" : "MISSED"

interface Summary {
  readonly throughput: number
  readonly cpuPerEvent: number
  readonly clientCpuShare: number
  readonly serverCpuShare: number
  readonly ownLatency: Percentiles
  readonly ownStart: Percentiles
  readonly sameLatency: Percentiles
  readonly sameStart: Percentiles
  readonly satLatency: Percentiles
  readonly satStart: Percentiles
  readonly idleKiB: number
  readonly idleHeapKiB: number
  readonly runKiB: number
  readonly runHeapKiB: number
  readonly maxIdle: number
  readonly maxIdleReason: string
  readonly maxIdleRssMiB: number
  /** RSS growth per connection over the ramp, and where 1 GiB would be reached at that slope. */
  readonly rampKiB: number
  readonly extrapolated: number
}

const summarize = (r: ServerResults): Summary => ({
  throughput: r.throughput.eventsPerSecond,
  cpuPerEvent: r.throughput.serverCpuMicrosPerEvent,
  clientCpuShare: r.throughput.clientCpuShare,
  serverCpuShare: r.throughput.serverCpuShare,
  ownLatency: histPercentiles(r.ownLoad.eventLatency),
  ownStart: samplePercentiles(r.ownLoad.startLatency),
  sameLatency: histPercentiles(r.sameLoad.eventLatency),
  sameStart: samplePercentiles(r.sameLoad.startLatency),
  satLatency: histPercentiles(r.saturation.eventLatency),
  satStart: samplePercentiles(r.saturation.startLatency),
  idleKiB: r.memory.idle.rssPerConnection / KIB,
  idleHeapKiB: r.memory.idle.heapPerConnection / KIB,
  runKiB: r.memory.activeRun.rssPerRun / KIB,
  runHeapKiB: r.memory.activeRun.heapPerRun / KIB,
  maxIdle: r.memory.maxIdle.connections,
  maxIdleReason: r.memory.maxIdle.reason,
  maxIdleRssMiB: r.memory.maxIdle.rssAtEnd / MIB,
  ...ramp(r.memory.maxIdle)
})

const ramp = (m: ServerResults["memory"]["maxIdle"]) => {
  const slope = (m.rssAtEnd - m.rssAtStart) / (m.openAtEnd - m.openAtStart)
  return {
    rampKiB: slope / KIB,
    extrapolated: slope > 0 && m.rssAtEnd < GIB ? m.openAtEnd + (GIB - m.rssAtEnd) / slope : Number.NaN
  }
}

const userSystem = (t: ThroughputResults) =>
  `${fixed(t.serverCpuMicrosPerEvent - t.serverSystemMicrosPerEvent, 2)} / ${fixed(t.serverSystemMicrosPerEvent, 2)}`

type Row = readonly [measure: string, agentwire: string, corked: string, uncorked: string, ratio: string, target: string]

/** The table, as Markdown (readable in a terminal too). */
export const printTable = (results: BenchResults): string => {
  const a = summarize(results.agentwire)
  const b = summarize(results.baseline)
  const u = results.uncorked
  const p = results.params
  const same = results.agentwire.sameLoad.offeredEventsPerSecond
  const judge = (ok: boolean) => p.mode === "full" ? mark(ok) : "not judged (smoke run)"
  const pa = results.agentwire.paced.median
  const pb = results.baseline.paced.median
  const pu = u.paced.median
  const na = "—"
  const efficiency = b.cpuPerEvent / a.cpuPerEvent
  const plusMs = (x: number, y: number) => Number.isFinite(x - y) ? `${x - y >= 0 ? "+" : "−"}${fixed(Math.abs(x - y), 0)} ms` : "n/a"
  const rows: Array<Row> = [
    [
      `**Paced**: server CPU per delivered event, µs (median of ${p.pacedRounds} rounds)`,
      fixed(pa.serverCpuMicrosPerEvent, 2),
      fixed(pb.serverCpuMicrosPerEvent, 2),
      fixed(pu.serverCpuMicrosPerEvent, 2),
      ratio(pa.serverCpuMicrosPerEvent, pb.serverCpuMicrosPerEvent),
      `≤ 1.10: ${judge(pa.serverCpuMicrosPerEvent / pb.serverCpuMicrosPerEvent <= 1.1)}`
    ],
    [
      "Paced: of which user / system (kernel), µs (medians)",
      `${fixed(pa.serverCpuMicrosPerEvent - pa.serverSystemMicrosPerEvent, 2)} / ${fixed(pa.serverSystemMicrosPerEvent, 2)}`,
      `${fixed(pb.serverCpuMicrosPerEvent - pb.serverSystemMicrosPerEvent, 2)} / ${fixed(pb.serverSystemMicrosPerEvent, 2)}`,
      `${fixed(pu.serverCpuMicrosPerEvent - pu.serverSystemMicrosPerEvent, 2)} / ${fixed(pu.serverSystemMicrosPerEvent, 2)}`,
      `user ${ratio(pa.serverCpuMicrosPerEvent - pa.serverSystemMicrosPerEvent, pb.serverCpuMicrosPerEvent - pb.serverSystemMicrosPerEvent)}`,
      ""
    ],
    [
      "Paced: main thread's share of the server's CPU (the rest: GC helper and libuv threads)",
      fixed(pa.mainThreadShare, 2),
      fixed(pb.mainThreadShare, 2),
      fixed(pu.mainThreadShare, 2),
      "",
      ""
    ],
    [
      "Paced: event latency p50 / p99, ms (median of rounds)",
      `${wholeMs(pa.eventLatencyP50)} / ${wholeMs(pa.eventLatencyP99)}`,
      `${wholeMs(pb.eventLatencyP50)} / ${wholeMs(pb.eventLatencyP99)}`,
      `${wholeMs(pu.eventLatencyP50)} / ${wholeMs(pu.eventLatencyP99)}`,
      `p99 ${plusMs(pa.eventLatencyP99, pb.eventLatencyP99)}`,
      ""
    ],
    [
      "Paced: run start p99, ms (median of rounds)",
      ms(pa.startLatencyP99),
      ms(pb.startLatencyP99),
      ms(pu.startLatencyP99),
      ratio(pa.startLatencyP99, pb.startLatencyP99),
      ""
    ],
    [
      "Paced: server write syscalls per delivered event",
      fixed(pa.writesPerEvent, 3),
      fixed(pb.writesPerEvent, 3),
      fixed(pu.writesPerEvent, 3),
      ratio(pa.writesPerEvent, pb.writesPerEvent),
      ""
    ],
    [
      "Paced: server / load generator CPU, % of one core",
      `${fixed(pa.serverCpuShare * 100, 0)} / ${fixed(pa.clientCpuShare * 100, 0)}`,
      `${fixed(pb.serverCpuShare * 100, 0)} / ${fixed(pb.clientCpuShare * 100, 0)}`,
      `${fixed(pu.serverCpuShare * 100, 0)} / ${fixed(pu.clientCpuShare * 100, 0)}`,
      "",
      ""
    ],
    [
      `**Burst**: fan-out throughput, events/s delivered (median of ${p.rounds})`,
      int(a.throughput),
      int(b.throughput),
      int(u.throughput.eventsPerSecond),
      ratio(a.throughput, b.throughput),
      `≥ 0.90: ${judge(a.throughput / b.throughput >= 0.9)}`
    ],
    [
      "Burst: server CPU per delivered event, µs",
      fixed(a.cpuPerEvent, 2),
      fixed(b.cpuPerEvent, 2),
      fixed(u.throughput.serverCpuMicrosPerEvent, 2),
      ratio(a.cpuPerEvent, b.cpuPerEvent),
      `efficiency ${fixed(efficiency, 2)} ≥ 0.90: ${judge(efficiency >= 0.9)}`
    ],
    [
      "Burst: of which user / system (kernel), µs",
      userSystem(results.agentwire.throughput),
      userSystem(results.baseline.throughput),
      userSystem(u.throughput),
      `user ${
        ratio(
          results.agentwire.throughput.serverCpuMicrosPerEvent - results.agentwire.throughput.serverSystemMicrosPerEvent,
          results.baseline.throughput.serverCpuMicrosPerEvent - results.baseline.throughput.serverSystemMicrosPerEvent
        )
      }`,
      ""
    ],
    [
      "Burst: server write syscalls per delivered event",
      fixed(results.agentwire.throughput.writesPerEvent, 3),
      fixed(results.baseline.throughput.writesPerEvent, 3),
      fixed(u.throughput.writesPerEvent, 3),
      ratio(results.agentwire.throughput.writesPerEvent, results.baseline.throughput.writesPerEvent),
      ""
    ],
    [
      `Event latency at 50 % of each one's maximum (${int(results.agentwire.ownLoad.offeredEventsPerSecond)} / ${
        int(results.baseline.ownLoad.offeredEventsPerSecond)
      } events/s offered), p50 / p95 / p99 / max ms`,
      fourWay(a.ownLatency, wholeMs),
      fourWay(b.ownLatency, wholeMs),
      na,
      `p99 ${plusMs(a.ownLatency.p99, b.ownLatency.p99)}`,
      `p99 ≤ baseline + 2 ms: ${judge(a.ownLatency.p99 <= b.ownLatency.p99 + 2)}; < 25 ms: ${judge(a.ownLatency.p99 < 25)}`
    ],
    [
      "Run start at 50 % of each one's maximum (`start_agent` → `agent_started`), p50 / p99 ms",
      `${ms(a.ownStart.p50)} / ${ms(a.ownStart.p99)}`,
      `${ms(b.ownStart.p50)} / ${ms(b.ownStart.p99)}`,
      na,
      `p99 ${ratio(a.ownStart.p99, b.ownStart.p99)}`,
      ""
    ],
    [
      `Event latency at one offered load for both (${int(same)} events/s: 50 % of the smaller maximum), p50 / p95 / p99 / max ms`,
      fourWay(a.sameLatency, wholeMs),
      fourWay(b.sameLatency, wholeMs),
      na,
      `p99 ${plusMs(a.sameLatency.p99, b.sameLatency.p99)}`,
      ""
    ],
    [
      "Run start at that same offered load, p50 / p99 ms",
      `${ms(a.sameStart.p50)} / ${ms(a.sameStart.p99)}`,
      `${ms(b.sameStart.p50)} / ${ms(b.sameStart.p99)}`,
      na,
      `p99 ${ratio(a.sameStart.p99, b.sameStart.p99)}`,
      ""
    ],
    [
      "Event latency at saturation (burst rounds), p50 / p95 / p99 / max ms",
      fourWay(a.satLatency, wholeMs),
      fourWay(b.satLatency, wholeMs),
      na,
      `p99 ${plusMs(a.satLatency.p99, b.satLatency.p99)}`,
      ""
    ],
    [
      "Run start at saturation, p50 / p99 ms",
      `${ms(a.satStart.p50)} / ${ms(a.satStart.p99)}`,
      `${ms(b.satStart.p50)} / ${ms(b.satStart.p99)}`,
      na,
      `p99 ${ratio(a.satStart.p99, b.satStart.p99)}`,
      ""
    ],
    [
      `RSS per idle connection, KiB (${int(p.idleConnections)} opened; JS heap in brackets)`,
      `${fixed(a.idleKiB, 1)} (${fixed(a.idleHeapKiB, 1)})`,
      `${fixed(b.idleKiB, 1)} (${fixed(b.idleHeapKiB, 1)})`,
      na,
      ratio(a.idleKiB, b.idleKiB),
      `≤ 1.25: ${judge(a.idleKiB / b.idleKiB <= 1.25)}; < 30 KiB: ${judge(a.idleKiB < 30)}`
    ],
    [
      `RSS per active (sleeping) run, KiB (${int(p.holdRuns)} runs; JS heap in brackets)`,
      `${fixed(a.runKiB, 1)} (${fixed(a.runHeapKiB, 1)})`,
      `${fixed(b.runKiB, 1)} (${fixed(b.runHeapKiB, 1)})`,
      na,
      `heap ${ratio(a.runHeapKiB, b.runHeapKiB)}`,
      ""
    ],
    [
      "Idle connections held with RSS < 1 GiB (RSS at the end)",
      `${int(a.maxIdle)} (${int(a.maxIdleRssMiB)} MiB)`,
      `${int(b.maxIdle)} (${int(b.maxIdleRssMiB)} MiB)`,
      na,
      ratio(a.maxIdle, b.maxIdle),
      `≥ 10,000: ${judge(a.maxIdle >= 10_000)}`
    ],
    [
      `Heartbeat sweep: longest event-loop stall with ${int(results.heartbeat.connections)} idle connections, ms`,
      ms(results.heartbeat.maxStallMs),
      "n/a (none)",
      na,
      "",
      ""
    ],
    ...engineRows(results.engine, na)
  ]
  const lines = [
    "| Measure | agentwire | raw `ws`, corked (baseline) | raw `ws`, uncorked | agentwire / corked | target |",
    "|---|---:|---:|---:|---:|---|",
    ...rows.map((r) => `| ${r.join(" | ")} |`)
  ]
  const pacedEvents = p.pacedRuns * (p.pacedSteps + 2) * p.pacedConnections / p.pacedUsers
  const notes = [
    "",
    `Paced load: ${int(p.pacedConnections)} connections, ${int(p.pacedUsers)} users (${p.pacedConnections / p.pacedUsers} sockets each), ` +
    `${int(p.pacedRuns)} \`ticker\` runs × ${p.pacedSteps} steps ${p.pacedIntervalMs} ms apart (\`steps=${p.pacedSteps} interval_ms=${p.pacedIntervalMs}\`; ` +
    `the baselines pace with \`setTimeout\`), started at an even rate over ${fixed(p.pacedSpreadMs / 1000, 1)} s ` +
    `(${int(pacedEvents)} events delivered per round); one warm-up round, then ${p.pacedRounds} rounds per server, the order rotated each round.`,
    `Burst load: ${int(p.connections)} connections, ${int(p.users)} users (${p.connections / p.users} sockets each), ` +
    `${int(p.runs)} concurrent \`ticker\` runs × ${p.steps} steps, interval 0 (${int(p.runs * (p.steps + 2) * p.connections / p.users)} events per round), ` +
    `one warm-up round, then ${p.rounds} rounds per server, order rotated. ` +
    `CPU during the burst rounds, server / load generator, % of one core: agentwire ${fixed(a.serverCpuShare * 100, 0)} / ${
      fixed(a.clientCpuShare * 100, 0)
    }, corked ${fixed(b.serverCpuShare * 100, 0)} / ${fixed(b.clientCpuShare * 100, 0)}, uncorked ${
      fixed(u.throughput.serverCpuShare * 100, 0)
    } / ${fixed(u.throughput.clientCpuShare * 100, 0)}.`,
    `Processes: ${results.machine.pinning}. Load average at start / end: ${results.machine.loadAverageAtStart.join(" ")} / ${
      results.machine.loadAverageAtEnd?.join(" ") ?? "n/a"
    }. Agentwire log level: ${p.logLevel}; heartbeat off in the compared servers (the baselines have none), ` +
    `measured on its own (interval ${results.heartbeat.intervalMs} ms, two sweeps).`,
    `Idle ramp stopped: agentwire: ${a.maxIdleReason}; baseline: ${b.maxIdleReason}. ` +
    `RSS grew ${fixed(a.rampKiB, 1)} / ${fixed(b.rampKiB, 1)} KiB per connection over the ramp (agentwire / baseline); ` +
    `at that slope 1 GiB would be reached near ${int(a.extrapolated)} / ${int(b.extrapolated)} connections (extrapolated, not measured).`
  ]
  return [...lines, ...notes].join("\n")
}

const engineRows = (e: EngineResult, na: string): Array<Row> => [
  [
    "Engine, in process: `make` + `createForUser` + run `echo` to `agent_completed` + release (no-op bridge, logs off), CPU µs per run",
    fixed(e.run.microsPerOp, 1),
    "n/a",
    na,
    "",
    ""
  ],
  [
    "Engine: `make` + `start` + `await` of `echo` (in-memory bridge, one connection, logs off / info), CPU µs per run",
    `${fixed(e.start.microsPerOp, 1)} / ${fixed(e.startWithLogs.microsPerOp, 1)}`,
    "n/a",
    na,
    "",
    ""
  ],
  [
    `Timer wait: CPU µs per \`Effect.sleep(5 ms)\` in a fiber (${int(e.sleep.waits)} waits, ${int(e.sleep.concurrent)} at a time) / per bare \`setTimeout\``,
    `${fixed(e.sleep.effectSleepCpuMicros, 2)} / ${fixed(e.sleep.setTimeoutCpuMicros, 2)}`,
    "n/a",
    na,
    "",
    ""
  ],
  [
    `Paced runs without sockets, in process: CPU µs per event (${int(e.pacedRuns.events)} events: ${int(e.pacedRuns.runs)} \`ticker\` runs × 40 steps 5 ms apart, encoded for one connection that drops them, logs off); baseline: its own run loop`,
    fixed(e.pacedRuns.agentwireCpuMicrosPerEvent, 2),
    fixed(e.pacedRuns.baselineCpuMicrosPerEvent, 2),
    na,
    ratio(e.pacedRuns.agentwireCpuMicrosPerEvent, e.pacedRuns.baselineCpuMicrosPerEvent),
    ""
  ],
  [
    "Engine: `createForUser` + release only, CPU µs",
    fixed(e.alloc.microsPerOp, 2),
    "n/a",
    na,
    "",
    ""
  ]
]

// ---------------------------------------------------------------------------
// files

const round3 = (n: number) => Math.round(n * 1000) / 1000

const rawServer = (r: ServerResults) => {
  const s = summarize(r)
  return {
    throughput: rawThroughput(r.throughput),
    paced: rawPaced(r.paced),
    saturation: {
      event_latency_ms: s.satLatency,
      start_latency_ms: roundPercentiles(s.satStart),
      event_latency_histogram_ms: r.saturation.eventLatency
    },
    half_own_maximum: rawLoad(r.ownLoad),
    same_offered_load: rawLoad(r.sameLoad),
    memory: {
      rss_bytes_per_idle_connection: Math.round(r.memory.idle.rssPerConnection),
      heap_bytes_per_idle_connection: Math.round(r.memory.idle.heapPerConnection),
      idle_connections_measured: r.memory.idle.connections,
      idle_connect_ms: Math.round(r.memory.idle.connectMs),
      rss_bytes_before_idle: r.memory.idle.rssBefore,
      rss_bytes_per_active_run: Math.round(r.memory.activeRun.rssPerRun),
      heap_bytes_per_active_run: Math.round(r.memory.activeRun.heapPerRun),
      active_runs_measured: r.memory.activeRun.runs,
      max_idle_connections_under_1gib: r.memory.maxIdle.connections,
      max_idle_open_at_end: r.memory.maxIdle.openAtEnd,
      max_idle_rss_bytes_at_end: r.memory.maxIdle.rssAtEnd,
      max_idle_stop_reason: r.memory.maxIdle.reason,
      max_idle_open_at_ramp_start: r.memory.maxIdle.openAtStart,
      max_idle_rss_bytes_at_ramp_start: r.memory.maxIdle.rssAtStart,
      ramp_rss_bytes_per_connection: Math.round(ramp(r.memory.maxIdle).rampKiB * KIB),
      extrapolated_connections_at_1gib: Math.round(ramp(r.memory.maxIdle).extrapolated),
      max_open_files: r.memory.maxIdle.maxOpenFiles,
      max_idle_ramp_ms: Math.round(r.memory.maxIdle.ms)
    }
  }
}

const rawThroughput = (t: ThroughputResults) => ({
  events_per_second: round3(t.eventsPerSecond),
  rounds: t.rounds.map(round3),
  server_cpu_us_per_event: round3(t.serverCpuMicrosPerEvent),
  server_system_cpu_us_per_event: round3(t.serverSystemMicrosPerEvent),
  write_syscalls_per_event: round3(t.writesPerEvent),
  server_cpu_share: round3(t.serverCpuShare),
  client_cpu_share: round3(t.clientCpuShare)
})

const rawPacedRound = (r: PacedRound) => ({
  frames: r.frames,
  elapsed_ms: Math.round(r.elapsedMs),
  server_cpu_us_per_event: round3(r.serverCpuMicrosPerEvent),
  server_system_cpu_us_per_event: round3(r.serverSystemMicrosPerEvent),
  main_thread_share_of_server_cpu: round3(r.mainThreadShare),
  write_syscalls_per_event: round3(r.writesPerEvent),
  event_latency_p50_ms: r.eventLatencyP50,
  event_latency_p99_ms: r.eventLatencyP99,
  start_latency_p99_ms: round3(r.startLatencyP99),
  server_cpu_share: round3(r.serverCpuShare),
  client_cpu_share: round3(r.clientCpuShare)
})

const rawPaced = (p: PacedResults) => ({
  median_of_rounds: rawPacedRound(p.median),
  rounds: p.rounds.map(rawPacedRound),
  pooled_event_latency_ms: histPercentiles(p.eventLatency),
  pooled_start_latency_ms: roundPercentiles(p.startLatency),
  event_latency_histogram_ms: p.eventLatency
})

const rawLoad = (l: FixedLoad) => ({
  offered_events_per_second: round3(l.offeredEventsPerSecond),
  runs_per_second: round3(l.runsPerSecond),
  delivered_events_per_second: round3(l.deliveredEventsPerSecond),
  runs_started: l.runsStarted,
  server_cpu_share: round3(l.serverCpuShare),
  event_latency_ms: histPercentiles(l.eventLatency),
  start_latency_ms: roundPercentiles(samplePercentiles(l.startLatency)),
  event_latency_histogram_ms: l.eventLatency
})

const roundPercentiles = (p: Percentiles): Percentiles => ({
  count: p.count,
  p50: round3(p.p50),
  p95: round3(p.p95),
  p99: round3(p.p99),
  max: round3(p.max)
})

export const toJson = (results: BenchResults) => ({
  machine: results.machine,
  params: results.params,
  agentwire: rawServer(results.agentwire),
  baseline: rawServer(results.baseline),
  uncorked: { throughput: rawThroughput(results.uncorked.throughput), paced: rawPaced(results.uncorked.paced) },
  ratios: {
    paced_server_cpu_per_event: round3(
      results.agentwire.paced.median.serverCpuMicrosPerEvent / results.baseline.paced.median.serverCpuMicrosPerEvent
    ),
    throughput: round3(results.agentwire.throughput.eventsPerSecond / results.baseline.throughput.eventsPerSecond),
    server_cpu_per_event: round3(
      results.agentwire.throughput.serverCpuMicrosPerEvent / results.baseline.throughput.serverCpuMicrosPerEvent
    ),
    rss_per_idle_connection: round3(results.agentwire.memory.idle.rssPerConnection / results.baseline.memory.idle.rssPerConnection)
  },
  heartbeat: {
    connections: results.heartbeat.connections,
    interval_ms: results.heartbeat.intervalMs,
    window_ms: results.heartbeat.windowMs,
    longest_event_loop_stall_ms: round3(results.heartbeat.maxStallMs)
  },
  engine: {
    alloc_us: round3(results.engine.alloc.microsPerOp),
    create_run_release_us: round3(results.engine.run.microsPerOp),
    start_await_us: round3(results.engine.start.microsPerOp),
    start_await_with_logs_us: round3(results.engine.startWithLogs.microsPerOp),
    effect_sleep_cpu_us: round3(results.engine.sleep.effectSleepCpuMicros),
    paced_runs_without_sockets_cpu_us_per_event: {
      agentwire: round3(results.engine.pacedRuns.agentwireCpuMicrosPerEvent),
      baseline: round3(results.engine.pacedRuns.baselineCpuMicrosPerEvent)
    },
    set_timeout_cpu_us: round3(results.engine.sleep.setTimeoutCpuMicros),
    iterations: {
      alloc: results.engine.alloc.iterations,
      create_run_release: results.engine.run.iterations,
      start_await: results.engine.start.iterations,
      start_await_with_logs: results.engine.startWithLogs.iterations
    }
  }
})

const BEGIN = "<!-- bench:results:begin (generated by `npm run bench`; edit outside these markers) -->"
const END = "<!-- bench:results:end -->"

const docsSection = (results: BenchResults) => {
  const m = results.machine
  return [
    BEGIN,
    "",
    `Measured ${m.date.slice(0, 10)} at commit \`${m.commit}\`${m.dirty ? " (with uncommitted changes in src/)" : ""}, command \`${m.command}\`.`,
    "",
    printTable(results),
    "",
    `Machine: \`nproc\` = ${m.nproc} (${m.cpu}), ${m.memory} RAM, Node ${m.node}, Linux ${m.kernel}.`,
    "",
    "```",
    "$ free -h",
    m.free,
    "```",
    "",
    "Raw numbers: `bench/results/latest.json`.",
    "",
    END
  ].join("\n")
}

/**
 * Writes the raw JSON to `json` (when given) and, when `docs`, the generated
 * section of `docs/benchmarks.md`. Returns the paths written.
 */
export const writeResults = (
  results: BenchResults,
  root: string,
  targets: { readonly json: string | undefined; readonly docs: boolean }
): Array<string> => {
  const written: Array<string> = []
  if (targets.json !== undefined) {
    mkdirSync(dirname(targets.json), { recursive: true })
    // histogram pairs on one line each: [ms, count]
    const text = JSON.stringify(toJson(results), null, 2).replace(/\[\n\s+(-?[\d.]+),\n\s+(-?[\d.]+)\n\s+\]/g, "[$1, $2]")
    writeFileSync(targets.json, `${text}\n`)
    written.push(targets.json)
  }
  if (!targets.docs) return written
  const docs = join(root, "docs", "benchmarks.md")
  const section = docsSection(results)
  const current = existsSync(docs) ? readFileSync(docs, "utf8") : "# Benchmarks\n\n"
  const begin = current.indexOf("<!-- bench:results:begin")
  const end = current.indexOf(END)
  const next = begin >= 0 && end > begin
    ? current.slice(0, begin) + section + current.slice(end + END.length)
    : `${current.trimEnd()}\n\n${section}\n`
  mkdirSync(join(root, "docs"), { recursive: true })
  writeFileSync(docs, next)
  written.push(docs)
  return written
}
