/**
 * `npm run bench [-- --quick | --paced-only | --runlog | --cluster | --profile[=paced|burst] [--strace]] [--no-write] [--out=<file>]
 *   [--agentwire-dir=<checkout>] [--keep-logs] [--server-node-flag=<flag>…] [--log-level=<level>] [--no-pin]
 *   [--baseline-cork=immediate] [size flags]`:
 * the orchestrator. docs/benchmarks.md describes every phase and option.
 *
 * Starts, each in its own process, the agentwire server (`src/main.ts`), the
 * raw `ws` baseline corked per tick like agentwire and the same baseline
 * uncorked (`bench/baseline-server.ts`, `BASELINE_CORK=1|0`), all with the
 * probe preloaded (`bench/probe.ts`: heap, user/system CPU, forced GC over IPC;
 * RSS, write syscalls and main-thread CPU are read from `/proc`), and one load
 * generator (`bench/loadgen.ts`) per server. With two or more CPUs and
 * `taskset`, servers run on CPU 0 and load generators (and this process) on
 * the others. Then it measures them in the same run, rotating the order of the
 * servers every round so that drift on a shared machine hits all alike:
 *
 * 1. memory first, while the heaps are fresh: RSS per idle connection, then
 *    per active (sleeping) run (agentwire and the corked baseline);
 * 2. the paced load: R ticker runs × K steps M ms apart, started at an even
 *    rate, on C_p connections of U_p users: CPU per delivered event, write
 *    syscalls, latency, run start (medians of rounds; all three servers);
 * 3. the burst load (fan-out throughput): R concurrent ticker runs (interval
 *    0) over C connections of U users (all three servers);
 * 4. latency and run start at a fixed offered load (open loop): each server
 *    at 50 % of its own maximum, and the faster one again at the slower one's
 *    load (agentwire and the corked baseline);
 * 5. the most idle connections held under 1 GiB RSS, up to the open-files
 *    limit or the bench's cap;
 * 6. the heartbeat sweep's longest stall, on an agentwire process of its own;
 * 7. in-process costs (`bench/engine.ts`), after the servers are gone.
 *
 * Prints one table; a full run writes `bench/results/latest.json` and the
 * generated part of `docs/benchmarks.md` (`--no-write` skips both; `--out`
 * writes the JSON elsewhere). `--quick` is a smoke run (small sizes, under
 * 30 s) that checks every phase completes and judges no target.
 * `--paced-only` runs phase 2 alone. `--profile` runs agentwire, then the
 * corked baseline, alone under the paced (or burst) load with `--cpu-prof` and
 * prints where the samples of the measured rounds went (`bench/profile.ts`);
 * with `--strace`, one more round per server under `strace -c -f` gives
 * syscalls per delivered event. `--agentwire-dir` runs another checkout's
 * `src/main.ts` (to measure a proposed change against the same baselines).
 * `--runlog` runs the paced and burst rounds of agentwire, agentwire without
 * its run log (`bench/agentwire-nolog.ts`) and the corked baseline, and prints
 * what logging every event costs. `--cluster` runs the paced and burst rounds of
 * two agentwire instances on one `redis-server` (each user's sockets spread over
 * both) against one in-memory instance, and prints delivered events/s and CPU
 * per delivered event summed over every process of the cluster, as ratios.
 *
 * Every wait is bounded; a watchdog ends the bench and every child process
 * (killed by pid) if it runs over.
 *
 * @module
 */
import { execSync, spawn } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { availableParallelism, cpus, loadavg, release, tmpdir, totalmem } from "node:os"
import { join, resolve } from "node:path"
import type { EngineResult } from "./engine.ts"
import {
  type Child,
  choosePinning,
  processCpuMsOf,
  type RedisProcess,
  spawnRedis,
  firstMessage,
  freePort,
  killAll,
  killChildrenOnExit,
  newRequestId,
  openFilesLimit,
  rssOf,
  spawnNode,
  stop,
  mainThreadCpuMsOf,
  waitForHttp,
  writeSyscallsOf
} from "./proc.ts"
import { summarizeProfile } from "./profile.ts"
import {
  type BenchResults,
  type FixedLoad,
  type MachineInfo,
  type PacedResults,
  type PacedRound,
  type Params,
  printTable,
  type ServerResults,
  type ThroughputResults,
  writeResults
} from "./report.ts"
import {
  BENCH_SECRET,
  type ConnectReply,
  histPercentiles,
  type LoadCommand,
  median,
  mergeSparse,
  type ProbeCommand,
  type ProbeReply,
  type RunsReply,
  samplePercentiles,
  type SparseHistogram
} from "./shared.ts"

const root = resolve(import.meta.dirname, "..")
const argv = process.argv.slice(2)
const quick = argv.includes("--quick")
/** `--profile` or `--profile=paced|burst` (default paced): both servers under that load with --cpu-prof. */
const profileArg = argv.find((a) => a === "--profile" || a.startsWith("--profile="))
const profile = profileArg !== undefined
const profileWorkload: "paced" | "burst" = profileArg === "--profile=burst" ? "burst" : "paced"
/** `--strace`: with `--profile`, also count each server's syscalls over the measured rounds (`strace -c -f`). */
const straceOn = argv.includes("--strace")
/** `--log-level=<level>`: agentwire's `AGENTWIRE_LOG_LEVEL` (default info, what a production process runs with). */
const logLevelArg = argv.find((a) => a.startsWith("--log-level="))?.slice("--log-level=".length) ?? "info"
/** `--paced-only`: only the paced rounds (agentwire and both baselines), a short table, nothing written. */
const pacedOnly = argv.includes("--paced-only")
/**
 * `--runlog`: what the run log costs: paced then burst rounds of agentwire, agentwire without its log
 * (`bench/agentwire-nolog.ts`) and the corked baseline, rotated; a short table, nothing written but `--out`.
 */
const runlogMode = argv.includes("--runlog")
/**
 * `--cluster`: two agentwire instances on one `redis-server` against one in-memory instance, paced then
 * burst rounds alternated; a short table, nothing written but `--out`. With `--quick`, the quick sizes.
 */
const clusterMode = argv.includes("--cluster")
/** `--baseline-cork=immediate`: the corked baseline uncorks on `setImmediate` instead of `process.nextTick` (an experiment). */
const baselineCork = argv.find((a) => a.startsWith("--baseline-cork="))?.slice("--baseline-cork=".length) ?? "1"
/** `--no-pin`: do not pin processes to CPUs even when the machine has two or more. */
/** CPUs available, read before the orchestrator pins itself (which narrows `availableParallelism()`). */
const NPROC = availableParallelism()
const pinning = choosePinning(NPROC, !argv.includes("--no-pin"))
const write = !argv.includes("--no-write") && !quick && !profile && !pacedOnly && !runlogMode && !clusterMode
/** `--out=<file>`: also (or, with `--no-write`, only) write the raw JSON there. */
const outArg = argv.find((a) => a.startsWith("--out="))?.slice("--out=".length)
/** `--agentwire-dir=<checkout>`: run that checkout's `src/main.ts` instead (to measure a proposed change). */
const agentwireDir = resolve(argv.find((a) => a.startsWith("--agentwire-dir="))?.slice("--agentwire-dir=".length) ?? ".")

/** `--server-node-flag=<flag>` (repeatable): extra Node flags for both servers, e.g. `--trace-gc`. */
const serverNodeFlags = argv.filter((a) => a.startsWith("--server-node-flag=")).map((a) => a.slice("--server-node-flag=".length))

const flag = (name: string, fallback: number) => {
  const hit = argv.find((a) => a.startsWith(`--${name}=`))
  const value = hit === undefined ? fallback : Number(hit.slice(name.length + 3))
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} must be a positive number`)
  return value
}

const params: Params = quick
  ? {
    mode: "quick",
    connections: flag("connections", 200),
    users: flag("users", 50),
    runs: flag("runs", 50),
    steps: flag("steps", 20),
    rounds: flag("rounds", 1),
    pacedConnections: flag("paced-connections", 100),
    pacedUsers: flag("paced-users", 25),
    pacedRuns: flag("paced-runs", 100),
    pacedSteps: flag("paced-steps", 10),
    pacedIntervalMs: flag("paced-interval", 5),
    pacedSpreadMs: flag("paced-spread", 300),
    pacedRounds: flag("paced-rounds", 1),
    loadMs: 500,
    holdRuns: 100,
    idleConnections: 400,
    idleCap: 2000,
    idleBatch: 800,
    idleBudgetMs: 4000,
    engineMs: 200,
    heartbeatConnections: 1000,
    logLevel: logLevelArg
  }
  : {
    mode: profile ? "profile" : "full",
    connections: flag("connections", 1000),
    users: flag("users", 250),
    runs: flag("runs", 250),
    steps: flag("steps", 200),
    rounds: flag("rounds", runlogMode ? 24 : 7),
    pacedConnections: flag("paced-connections", 400),
    pacedUsers: flag("paced-users", 100),
    pacedRuns: flag("paced-runs", 1000),
    pacedSteps: flag("paced-steps", 40),
    pacedIntervalMs: flag("paced-interval", 5),
    pacedSpreadMs: flag("paced-spread", 3000),
    pacedRounds: flag("paced-rounds", runlogMode ? 16 : 4),
    loadMs: 4000,
    holdRuns: 1000,
    idleConnections: 5000,
    idleCap: flag("idle-cap", 40_000),
    idleBatch: 5000,
    idleBudgetMs: 30_000,
    engineMs: 1000,
    heartbeatConnections: 10_000,
    logLevel: logLevelArg
  }

const WATCHDOG_MS = quick ? 150_000 : runlogMode || clusterMode ? 900_000 : 298_000
const GIB = 1024 * 1024 * 1024
const NOFILE = 200_000
const PHASE_TIMEOUT_MS = quick ? 8000 : 30_000

const workDir = mkdtempSync(join(tmpdir(), "agentwire-bench-"))
const log = (line: string) => process.stderr.write(`[bench ${((performance.now() - t0) / 1000).toFixed(1)}s] ${line}\n`)
const t0 = performance.now()

// ---------------------------------------------------------------------------
// cleanup: every child dies with the bench, however it ends

killChildrenOnExit()
const watchdog = setTimeout(() => {
  log(`watchdog: still running after ${WATCHDOG_MS / 1000}s; killing everything`)
  killAll()
  process.exit(1)
}, WATCHDOG_MS)
watchdog.unref()

// ---------------------------------------------------------------------------
// processes

/**
 * `baseline`: raw `ws`, corked per tick like agentwire; `uncorked`: the same server writing each frame alone;
 * `agentwire-nolog`: agentwire with a run log that keeps nothing (`bench/agentwire-nolog.ts`, `--runlog` only).
 */
type TargetName = "agentwire" | "baseline" | "uncorked" | "agentwire-nolog" | "cluster"

interface Target {
  readonly name: TargetName
  readonly port: number
  readonly server: Child
  loadgen: Child
  /** More agentwire processes of the same target (`--cluster`: the second instance), probed like `server`. */
  readonly peers?: ReadonlyArray<Child>
  /** Processes without the probe (`--cluster`: `redis-server`): CPU and write syscalls read from `/proc`. */
  readonly foreign?: ReadonlyArray<{ readonly name: string; readonly pid: number }>
}

/**
 * The heartbeat is off in the compared servers (the baseline has none: it would
 * be wire work the baseline does not do); its cost is measured on a server of
 * its own, `agentwire-heartbeat`, with this interval.
 */
const HEARTBEAT_MS = quick ? 500 : 2000

const startServer = async (
  name: TargetName | "agentwire-heartbeat" | "cluster-a" | "cluster-b",
  extraNodeFlags: ReadonlyArray<string> = [],
  extraEnv: Record<string, string> = {}
) => {
  const port = await freePort()
  const nodeFlags = ["--expose-gc", "--import", "./bench/probe.ts", ...serverNodeFlags, ...extraNodeFlags]
  const server = name === "agentwire" || name === "agentwire-heartbeat" || name === "agentwire-nolog" || name === "cluster-a" ||
      name === "cluster-b"
    ? spawnNode({
      name,
      cwd: root,
      cpus: pinning.server,
      nofile: NOFILE,
      logFile: join(workDir, `${name}.log`),
      // the no-log variant is this checkout's (it imports ../src); --agentwire-dir moves only the real one
      args: [...nodeFlags, name === "agentwire-nolog" ? join(root, "bench/agentwire-nolog.ts") : join(agentwireDir, "src/main.ts")],
      env: {
        AGENTWIRE_HOST: "127.0.0.1",
        AGENTWIRE_PORT: String(port),
        // each server its own history database (SQLite allows one writer per file)
        AGENTWIRE_DATA_DIR: join(workDir, `${name}-data`),
        AGENTWIRE_JWT_SECRET: BENCH_SECRET,
        AGENTWIRE_LOG_LEVEL: params.logLevel,
        AGENTWIRE_MAX_MESSAGE_BYTES: "65536",
        AGENTWIRE_HEARTBEAT_MS: name === "agentwire-heartbeat" ? String(HEARTBEAT_MS) : "0",
        // admission and client-frame limits (issue 8) high or off: the bench offers the same
        // load to all servers, and the baselines refuse and slow nothing; every run must be admitted
        AGENTWIRE_MAX_RUNS_PER_USER: "10000",
        AGENTWIRE_MAX_RUNS: "1000000",
        AGENTWIRE_RUN_STARTS_PER_SECOND: "0",
        AGENTWIRE_MAX_FRAMES_PER_SECOND: "0",
        AGENTWIRE_MAX_CONNECTIONS_PER_USER: "10000",
        BENCH_LOOP_DELAY: name === "agentwire-heartbeat" ? "1" : "0",
        NODE_ENV: "production",
        ...extraEnv
      }
    })
    : spawnNode({
      name,
      cwd: root,
      cpus: pinning.server,
      nofile: NOFILE,
      logFile: join(workDir, `${name}.log`),
      args: [...nodeFlags, "bench/baseline-server.ts"],
      env: {
        BASELINE_HOST: "127.0.0.1",
        BASELINE_PORT: String(port),
        BASELINE_JWT_SECRET: BENCH_SECRET,
        BASELINE_MAX_MESSAGE_BYTES: "65536",
        BASELINE_CORK: name === "uncorked" ? "0" : baselineCork
      }
    })
  await waitForHttp(port, "/health", 30_000, server)
  return { port, server }
}

/** `port`: one port, or a comma-separated list (each user's sockets spread over them, `bench/loadgen.ts`). */
const startLoadgen = async (name: string, port: number | string, sourcePrefix: string) => {
  const loadgen = spawnNode({
    name: `loadgen(${name})`,
    cwd: root,
    cpus: pinning.client,
    nofile: NOFILE,
    logFile: join(workDir, `loadgen-${name}.log`),
    args: ["bench/loadgen.ts", String(port), sourcePrefix]
  })
  await firstMessage(loadgen, 30_000)
  return loadgen
}

/**
 * The server's stats; with `gc`, after two full collections, or with `reduce` after V8's memory-reducing
 * ("last resort") collection, which also shrinks the young generation: what is left is what the process keeps.
 */
const probe = async (target: { readonly server: Child }, gc: boolean, resetLoopDelay = false, reduce = false): Promise<ProbeReply> => {
  const message: ProbeCommand = { probe: "stats", id: newRequestId(), gc, resetLoopDelay, ...(reduce ? { reduce } : {}) }
  const reply = await target.server.request<ProbeReply>(message, 30_000)
  // RSS read from outside: inside, it needs a free file descriptor
  return { ...reply, rss: rssOf(target.server.pid) }
}

const command = <R>(target: { readonly loadgen: Child }, message: LoadCommand, timeoutMs: number) =>
  target.loadgen.request<R>(message, timeoutMs)

const connect = async (
  target: { readonly loadgen: Child },
  count: number,
  users: number,
  userBase: number,
  role: "load" | "idle"
) => {
  const reply = await command<ConnectReply>(
    target,
    { cmd: "connect", id: newRequestId(), count, users, userBase, role },
    PHASE_TIMEOUT_MS * 4
  )
  return reply
}

const check = (target: Target, what: string, reply: RunsReply) => {
  if (!reply.ok) throw new Error(`${target.name}: ${what}: ${reply.error ?? "failed"}`)
  return reply
}

// ---------------------------------------------------------------------------
// phases

interface Round {
  readonly eventsPerSecond: number
  readonly frames: number
  readonly elapsedMs: number
  readonly serverCpuMs: number
  /** The kernel part of `serverCpuMs`. */
  readonly serverSystemMs: number
  /** The server's main (JavaScript) thread's part of `serverCpuMs` (10 ms resolution). */
  readonly serverMainThreadMs: number
  readonly clientCpuMs: number
  /** Write-like syscalls of the server during the round (`syscw`). */
  readonly writes: number
  readonly eventLatency: SparseHistogram
  readonly startLatency: ReadonlyArray<number>
  /** CPU ms of each process of the target during the round (several only for `--cluster`). */
  readonly cpuByProcess: ReadonlyArray<readonly [string, number]>
}

/** Runs one load-generator phase and reads the server's CPU time and write syscalls around it. */
const measured = async (target: Target, what: string, message: LoadCommand, timeoutMs: number): Promise<Round> => {
  // every process of the target: the server, its peers (probed) and foreign processes (read from /proc);
  // one server and nothing else but with --cluster
  const nodes = [target.server, ...(target.peers ?? [])]
  const foreign = target.foreign ?? []
  const pids = [...nodes.map((n) => n.pid), ...foreign.map((f) => f.pid)]
  const sum = (xs: ReadonlyArray<number>) => xs.reduce((s, x) => s + x, 0)
  const before = await Promise.all(nodes.map((n) => probe({ server: n }, false)))
  const foreign0 = foreign.map((f) => processCpuMsOf(f.pid))
  const writes0 = sum(pids.map(writeSyscallsOf))
  const main0 = sum(nodes.map((n) => mainThreadCpuMsOf(n.pid)))
  const reply = check(target, what, await command<RunsReply>(target, message, timeoutMs))
  const writes1 = sum(pids.map(writeSyscallsOf))
  const main1 = sum(nodes.map((n) => mainThreadCpuMsOf(n.pid)))
  const foreign1 = foreign.map((f) => processCpuMsOf(f.pid))
  const after = await Promise.all(nodes.map((n) => probe({ server: n }, false)))
  const cpuByProcess: Array<readonly [string, number]> = [
    ...nodes.map((n, i) => [n.name, (after[i]!.cpuMicros - before[i]!.cpuMicros) / 1000] as const),
    ...foreign.map((f, i) => [f.name, foreign1[i]! - foreign0[i]!] as const)
  ]
  return {
    eventsPerSecond: reply.frames / (reply.elapsedMs / 1000),
    frames: reply.frames,
    elapsedMs: reply.elapsedMs,
    serverCpuMs: sum(cpuByProcess.map(([, ms]) => ms)),
    // foreign processes' system time is not split out (/proc gives it, but their total is what is reported)
    serverSystemMs: sum(nodes.map((_, i) => (after[i]!.cpuSystemMicros - before[i]!.cpuSystemMicros) / 1000)),
    serverMainThreadMs: main1 - main0,
    clientCpuMs: reply.clientCpuMs,
    writes: writes1 - writes0,
    eventLatency: reply.eventLatency,
    startLatency: reply.startLatency,
    cpuByProcess
  }
}

const burstRound = (target: Target): Promise<Round> =>
  measured(
    target,
    "throughput round",
    { cmd: "burst", id: newRequestId(), runs: params.runs, steps: params.steps, timeoutMs: PHASE_TIMEOUT_MS },
    PHASE_TIMEOUT_MS + 5000
  )

/**
 * One paced round: `pacedRuns` ticker runs (`steps=pacedSteps interval_ms=pacedIntervalMs`)
 * started open-loop at an even rate over `pacedSpreadMs`, round robin over the first
 * `pacedUsers` load users; waits for every frame.
 */
const pacedRound = (target: Target): Promise<Round> =>
  measured(
    target,
    "paced round",
    {
      cmd: "load",
      id: newRequestId(),
      runsPerSecond: params.pacedRuns / (params.pacedSpreadMs / 1000),
      steps: params.pacedSteps,
      intervalMs: params.pacedIntervalMs,
      users: params.pacedUsers,
      durationMs: params.pacedSpreadMs,
      timeoutMs: PHASE_TIMEOUT_MS
    },
    params.pacedSpreadMs + PHASE_TIMEOUT_MS + 5000
  )

const pacedResults = (rs: ReadonlyArray<Round>): PacedResults => {
  const rounds: Array<PacedRound> = rs.map((r) => {
    const latency = histPercentiles(r.eventLatency)
    return {
      frames: r.frames,
      elapsedMs: r.elapsedMs,
      serverCpuMicrosPerEvent: (r.serverCpuMs * 1000) / r.frames,
      serverSystemMicrosPerEvent: (r.serverSystemMs * 1000) / r.frames,
      mainThreadShare: r.serverMainThreadMs / r.serverCpuMs,
      writesPerEvent: r.writes / r.frames,
      eventLatencyP50: latency.p50,
      eventLatencyP99: latency.p99,
      startLatencyP99: samplePercentiles(r.startLatency).p99,
      serverCpuShare: r.serverCpuMs / r.elapsedMs,
      clientCpuShare: r.clientCpuMs / r.elapsedMs
    }
  })
  const med = (f: (r: PacedRound) => number) => median(rounds.map(f))
  return {
    rounds,
    median: {
      frames: med((r) => r.frames),
      elapsedMs: med((r) => r.elapsedMs),
      serverCpuMicrosPerEvent: med((r) => r.serverCpuMicrosPerEvent),
      serverSystemMicrosPerEvent: med((r) => r.serverSystemMicrosPerEvent),
      mainThreadShare: med((r) => r.mainThreadShare),
      writesPerEvent: med((r) => r.writesPerEvent),
      eventLatencyP50: med((r) => r.eventLatencyP50),
      eventLatencyP99: med((r) => r.eventLatencyP99),
      startLatencyP99: med((r) => r.startLatencyP99),
      serverCpuShare: med((r) => r.serverCpuShare),
      clientCpuShare: med((r) => r.clientCpuShare)
    },
    eventLatency: rs.reduce<SparseHistogram>((h, r) => mergeSparse(h, r.eventLatency), []),
    startLatency: samplePercentiles(rs.flatMap((r) => r.startLatency))
  }
}

const throughputResults = (rs: ReadonlyArray<Round>): ThroughputResults => {
  const events = rs.reduce((s, r) => s + r.frames, 0)
  return {
    eventsPerSecond: median(rs.map((r) => r.eventsPerSecond)),
    rounds: rs.map((r) => r.eventsPerSecond),
    serverCpuMicrosPerEvent: (rs.reduce((s, r) => s + r.serverCpuMs, 0) * 1000) / events,
    serverSystemMicrosPerEvent: (rs.reduce((s, r) => s + r.serverSystemMs, 0) * 1000) / events,
    writesPerEvent: rs.reduce((s, r) => s + r.writes, 0) / events,
    clientCpuShare: rs.reduce((s, r) => s + r.clientCpuMs, 0) / rs.reduce((s, r) => s + r.elapsedMs, 0),
    serverCpuShare: rs.reduce((s, r) => s + r.serverCpuMs, 0) / rs.reduce((s, r) => s + r.elapsedMs, 0)
  }
}

/**
 * Rounds of `round` on every target, the order rotated each round so drift hits all alike (or as `orderOf`
 * says); one warm-up round each first.
 */
const alternate = async (
  targets: ReadonlyArray<Target>,
  rounds: number,
  round: (target: Target) => Promise<Round>,
  what: string,
  orderOf: (r: number) => ReadonlyArray<Target> = (r) => [...targets.slice(r % targets.length), ...targets.slice(0, r % targets.length)]
) => {
  for (const target of targets) await round(target)
  const out = new Map<TargetName, Array<Round>>(targets.map((t) => [t.name, []]))
  for (let r = 0; r < rounds; r++) {
    const order = orderOf(r)
    for (const target of order) {
      const result = await round(target)
      out.get(target.name)!.push(result)
      log(`  ${what} round ${r + 1} ${target.name}: ${(result.serverCpuMs * 1000 / result.frames).toFixed(2)} µs CPU/event (${
        (result.serverSystemMs * 1000 / result.frames).toFixed(2)
      } system), ${
        (result.writes / result.frames).toFixed(2)
      } writes/event, ${result.eventsPerSecond.toFixed(0)} ev/s`)
    }
  }
  return out
}

const loadPhase = async (target: Target, offeredEventsPerSecond: number, socketsPerUser: number): Promise<FixedLoad> => {
  const runsPerSecond = offeredEventsPerSecond / ((params.steps + 2) * socketsPerUser)
  const before = await probe(target, false)
  const reply = check(
    target,
    "fixed-load phase",
    await command<RunsReply>(
      target,
      {
        cmd: "load",
        id: newRequestId(),
        runsPerSecond,
        steps: params.steps,
        durationMs: params.loadMs,
        timeoutMs: PHASE_TIMEOUT_MS
      },
      params.loadMs + PHASE_TIMEOUT_MS + 5000
    )
  )
  const after = await probe(target, false)
  return {
    offeredEventsPerSecond,
    runsPerSecond,
    deliveredEventsPerSecond: reply.frames / (reply.elapsedMs / 1000),
    runsStarted: reply.runsStarted,
    eventLatency: reply.eventLatency,
    startLatency: reply.startLatency,
    serverCpuShare: (after.cpuMicros - before.cpuMicros) / 1000 / reply.elapsedMs
  }
}

const holdPhase = async (target: Target) => {
  const before = await probe(target, true)
  check(
    target,
    "active-run memory",
    await command<RunsReply>(target, { cmd: "hold", id: newRequestId(), runs: params.holdRuns, timeoutMs: PHASE_TIMEOUT_MS }, PHASE_TIMEOUT_MS + 5000)
  )
  const after = await probe(target, true)
  return {
    runs: params.holdRuns,
    rssPerRun: (after.rss - before.rss) / params.holdRuns,
    heapPerRun: (after.heapUsed - before.heapUsed) / params.holdRuns
  }
}

/** Users of idle sockets start here, far from the load users. */
const IDLE_USER_BASE = 100_000
const IDLE_SOCKETS_PER_USER = 4

/**
 * RSS per idle connection after V8's memory-reducing collection on both servers: after two plain full GCs, RSS
 * still holds the young generation as the handshake burst left it, which swung the figure by 4-10 KiB per
 * connection between repetitions of one build (agentwire's startup already grows its semi-space) while the JS
 * heap per connection moved by 0.1 KiB; the memory-reducing collection shrinks it, so what is left is what the
 * connections keep.
 */
const idlePhase = async (target: Target) => {
  const before = await probe(target, true, false, true)
  const reply = await connect(target, params.idleConnections, params.idleConnections / IDLE_SOCKETS_PER_USER, IDLE_USER_BASE, "idle")
  if (!reply.ok) throw new Error(`${target.name}: idle connections: ${reply.error ?? "failed"}`)
  const after = await probe(target, true, false, true)
  return {
    connections: params.idleConnections,
    connectMs: reply.ms,
    rssBefore: before.rss,
    rssPerConnection: (after.rss - before.rss) / params.idleConnections,
    heapPerConnection: (after.heapUsed - before.heapUsed) / params.idleConnections
  }
}

/** File descriptors a server or load generator needs besides its sockets. */
const FD_RESERVE = 200

/**
 * Adds idle connections in batches until RSS reaches 1 GiB, the open-files
 * limit of either process, the bench's cap, a failure or the time budget.
 */
const rampPhase = async (target: Target, alreadyOpen: number) => {
  const started = performance.now()
  const serverFiles = openFilesLimit(target.server.pid)
  const clientFiles = openFilesLimit(target.loadgen.pid)
  const fileCap = Math.min(serverFiles.soft, clientFiles.soft) - FD_RESERVE
  const cap = Math.min(params.idleCap, fileCap)
  let open = alreadyOpen
  let userBase = IDLE_USER_BASE + params.idleConnections / IDLE_SOCKETS_PER_USER
  let last = await probe(target, true)
  const rssAtStart = last.rss
  let heldUnderLimit = last.rss < GIB ? open : 0
  let reason = ""
  for (let batch = 0; batch < 1000; batch++) {
    if (last.rss >= GIB) {
      reason = "RSS reached 1 GiB"
      break
    }
    if (open >= cap) {
      reason = cap === fileCap
        ? `open-files limit of ${serverFiles.soft} per process (${
          serverFiles.hard < NOFILE ? `the hard limit; raising it needs CAP_SYS_RESOURCE, which this machine does not grant` : "ulimit -n"
        }), ${FD_RESERVE} kept for other files; RSS still under 1 GiB`
        : `bench cap of ${params.idleCap} connections (time budget); RSS still under 1 GiB`
      break
    }
    if (performance.now() - started > params.idleBudgetMs) {
      reason = `time budget of ${params.idleBudgetMs / 1000}s spent; RSS still under 1 GiB`
      break
    }
    const count = Math.min(params.idleBatch, cap - open)
    const reply = await connect(target, count, Math.ceil(count / IDLE_SOCKETS_PER_USER), userBase, "idle")
    userBase += Math.ceil(count / IDLE_SOCKETS_PER_USER)
    open += reply.opened
    last = await probe(target, true)
    log(`  ${target.name}: ${open} open, RSS ${(last.rss / 1024 / 1024).toFixed(0)} MiB, batch of ${count} in ${reply.ms.toFixed(0)} ms`)
    if (last.rss < GIB) heldUnderLimit = open
    if (!reply.ok) {
      reason = `connections failed: ${reply.error ?? "unknown"} (${reply.failed} failures)`
      break
    }
  }
  return {
    connections: heldUnderLimit,
    openAtStart: alreadyOpen,
    rssAtStart,
    rssAtEnd: last.rss,
    openAtEnd: open,
    reason,
    maxOpenFiles: serverFiles.soft,
    ms: performance.now() - started
  }
}

/**
 * The heartbeat's cost: with `connections` idle sockets open, the longest
 * event-loop stall over a window holding two sweeps (the probe samples event
 * loop delay with a 1 ms timer).
 */
const heartbeatPhase = async (hb: { readonly server: Child; readonly loadgen: Child }, connections: number) => {
  const reply = await connect(hb, connections, Math.ceil(connections / IDLE_SOCKETS_PER_USER), IDLE_USER_BASE, "idle")
  if (!reply.ok) throw new Error(`agentwire-heartbeat: connections: ${reply.error ?? "failed"}`)
  await probe(hb, false, true)
  const windowMs = HEARTBEAT_MS * 2 + 500
  await new Promise((r) => setTimeout(r, windowMs))
  const after = await probe(hb, false)
  return { connections, intervalMs: HEARTBEAT_MS, windowMs, maxStallMs: after.loopDelayMaxMs }
}

const runEngine = async (): Promise<EngineResult> => {
  const child = spawnNode({
    name: "engine",
    cwd: root,
    cpus: pinning.server,
    nofile: 4096,
    logFile: join(workDir, "engine.log"),
    args: ["bench/engine.ts", String(params.engineMs)]
  })
  const result = await new Promise<EngineResult>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("engine benchmark: no result in time")), params.engineMs * 10 + 20_000)
    child.process.once("message", (message) => {
      clearTimeout(timer)
      resolve(message as EngineResult)
    })
    child.exited.then((how) => {
      clearTimeout(timer)
      reject(new Error(`engine benchmark exited (${how}) without a result; see ${join(workDir, "engine.log")}`))
    })
  })
  await stop(child, "SIGTERM", 2000)
  return result
}

const machine = (): MachineInfo => {
  const sh = (cmd: string) => {
    try {
      return execSync(cmd, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trimEnd()
    } catch {
      return "unknown"
    }
  }
  return {
    date: new Date().toISOString(),
    commit: sh("git rev-parse --short HEAD"),
    dirty: sh("git status --porcelain -- src") !== "",
    nproc: NPROC,
    cpu: cpus()[0]?.model ?? "unknown",
    memory: `${(totalmem() / GIB).toFixed(1)} GiB`,
    free: sh("free -h"),
    node: process.version,
    kernel: release(),
    command: `npm run bench${argv.length > 0 ? ` -- ${argv.join(" ")}` : ""}`,
    pinning: pinning.description,
    loadAverageAtStart: loadavg().map((l) => Math.round(l * 100) / 100),
    ...(agentwireDir === root ? {} : { agentwireDir })
  }
}

// ---------------------------------------------------------------------------

const benchmark = async (): Promise<BenchResults> => {
  log(`mode ${params.mode}; logs and temp files in ${workDir}`)
  log(`pinning: ${pinning.description}`)
  if (params.pacedConnections > params.connections || params.pacedUsers > params.users) {
    throw new Error("the paced load's connections and users must not exceed the burst load's")
  }
  const info = machine()
  const [aw, bl, un, hbServer] = await Promise.all([
    startServer("agentwire"),
    startServer("baseline"),
    startServer("uncorked"),
    startServer("agentwire-heartbeat")
  ])
  const targets: Array<Target> = [
    { name: "agentwire", ...aw, loadgen: await startLoadgen("agentwire", aw.port, "127.0.1.") },
    { name: "baseline", ...bl, loadgen: await startLoadgen("baseline", bl.port, "127.0.2.") },
    { name: "uncorked", ...un, loadgen: await startLoadgen("uncorked", un.port, "127.0.4.") }
  ]
  const [agentwire, baseline, uncorked] = targets as [Target, Target, Target]
  const compared: Array<Target> = [agentwire, baseline]
  log("servers and load generators up")

  // memory first, on processes that have not grown their heaps under load yet
  const idles = { agentwire: await idlePhase(agentwire), baseline: await idlePhase(baseline) }
  const holds = { agentwire: await holdPhase(agentwire), baseline: await holdPhase(baseline) }
  log("memory per idle connection and per active run done")

  // the paced load first, on its own (smaller) set of connections
  for (const target of targets) {
    const reply = await connect(target, params.pacedConnections, params.pacedUsers, 0, "load")
    if (!reply.ok) throw new Error(`${target.name}: paced connections: ${reply.error ?? "failed"}`)
  }
  log(`${params.pacedConnections} connections open on each server; paced rounds`)
  const paced = await alternate(targets, params.pacedRounds, pacedRound, "paced")

  // then the rest of the burst load's connections, for the users after the paced ones
  const more = params.connections - params.pacedConnections
  for (const target of targets) {
    if (more === 0) break
    const reply = await connect(target, more, params.users - params.pacedUsers, params.pacedUsers, "load")
    if (!reply.ok) throw new Error(`${target.name}: load connections: ${reply.error ?? "failed"}`)
  }
  const socketsPerUser = params.connections / params.users
  log(`${params.connections} connections open on each server; burst rounds`)
  const rounds = await alternate(targets, params.rounds, burstRound, "burst")
  const roundsOf = (name: TargetName) => rounds.get(name)!
  const maxima = {
    agentwire: median(roundsOf("agentwire").map((r) => r.eventsPerSecond)),
    baseline: median(roundsOf("baseline").map((r) => r.eventsPerSecond))
  }
  log(`throughput: agentwire ${maxima.agentwire.toFixed(0)} ev/s, baseline ${maxima.baseline.toFixed(0)} ev/s`)
  await Promise.all([stop(uncorked.loadgen, "SIGKILL"), stop(uncorked.server, "SIGTERM")])

  // each server at 50 % of its own maximum (the latency target) ...
  const ownLoads = {
    agentwire: await loadPhase(agentwire, maxima.agentwire * 0.5, socketsPerUser),
    baseline: await loadPhase(baseline, maxima.baseline * 0.5, socketsPerUser)
  }
  // ... and the faster one again at the slower one's load, so both latencies are compared at one offered load
  const [slower, faster] = maxima.agentwire <= maxima.baseline ? [agentwire, baseline] : [baseline, agentwire]
  const sameLoads = {
    [slower.name]: ownLoads[slower.name as "agentwire" | "baseline"],
    [faster.name]: await loadPhase(faster, maxima[slower.name as "agentwire" | "baseline"] * 0.5, socketsPerUser)
  } as Record<"agentwire" | "baseline", FixedLoad>
  log("fixed loads done")

  const ramps = {
    agentwire: await rampPhase(agentwire, params.connections + params.idleConnections),
    baseline: await rampPhase(baseline, params.connections + params.idleConnections)
  }
  log(`idle ramp: agentwire ${ramps.agentwire.connections}, baseline ${ramps.baseline.connections}`)

  await Promise.all(compared.flatMap((t) => [stop(t.loadgen, "SIGKILL"), stop(t.server, "SIGTERM")]))

  const hb = { ...hbServer, loadgen: await startLoadgen("agentwire-heartbeat", hbServer.port, "127.0.3.") }
  const heartbeat = await heartbeatPhase(hb, params.heartbeatConnections)
  log(`heartbeat: longest stall ${heartbeat.maxStallMs.toFixed(1)} ms with ${heartbeat.connections} connections`)
  await Promise.all([stop(hb.loadgen, "SIGKILL"), stop(hb.server, "SIGTERM")])
  const engine = await runEngine()
  log("engine overhead done")

  const serverResults = (name: "agentwire" | "baseline"): ServerResults => {
    const rs = roundsOf(name)
    return {
      throughput: throughputResults(rs),
      paced: pacedResults(paced.get(name)!),
      saturation: {
        eventLatency: rs.reduce<SparseHistogram>((h, r) => mergeSparse(h, r.eventLatency), []),
        startLatency: rs.flatMap((r) => r.startLatency)
      },
      ownLoad: ownLoads[name],
      sameLoad: sameLoads[name],
      memory: { activeRun: holds[name], idle: idles[name], maxIdle: ramps[name] }
    }
  }

  return {
    machine: { ...info, loadAverageAtEnd: loadavg().map((l) => Math.round(l * 100) / 100) },
    params,
    agentwire: serverResults("agentwire"),
    baseline: serverResults("baseline"),
    uncorked: { throughput: throughputResults(roundsOf("uncorked")), paced: pacedResults(paced.get("uncorked")!) },
    heartbeat,
    engine
  }
}

/** Parses the table `strace -c` writes: calls per syscall, and the total. */
const parseStrace = (text: string) => {
  const calls = new Map<string, number>()
  for (const line of text.split("\n")) {
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$/.exec(line)
    if (m !== null && m[2] !== "total") calls.set(m[2]!, Number(m[1]))
  }
  return calls
}

/**
 * `--profile[=paced|burst]`: agentwire, then the corked baseline, each alone under
 * that load with `--cpu-prof`; prints where the samples of the measured rounds went
 * and (with `--strace`) the syscalls per delivered event over those rounds.
 */
const profileRun = async () => {
  const profileDir = join(root, "bench", "results", "profiles")
  mkdirSync(profileDir, { recursive: true })
  log(`pinning: ${pinning.description}; workload: ${profileWorkload}`)
  const out: Array<string> = []
  for (const name of ["agentwire", "baseline"] as const) {
    const file = `${name}-${profileWorkload}.cpuprofile`
    const server = await startServer(name, ["--cpu-prof", `--cpu-prof-dir=${profileDir}`, `--cpu-prof-name=${file}`])
    const target: Target = { name, ...server, loadgen: await startLoadgen(name, server.port, "127.0.1.") }
    const [connections, users, rounds, round] = profileWorkload === "paced"
      ? [params.pacedConnections, params.pacedUsers, params.pacedRounds, pacedRound]
      : [params.connections, params.users, params.rounds, burstRound]
    const reply = await connect(target, connections, users, 0, "load")
    if (!reply.ok) throw new Error(`load connections: ${reply.error ?? "failed"}`)
    await round(target) // warm-up: not in the summary
    const fromMicros = (await probe(target, false)).monotonicMicros
    let frames = 0
    let cpuMs = 0
    let writes = 0
    for (let r = 1; r <= rounds; r++) {
      const result = await round(target)
      frames += result.frames
      cpuMs += result.serverCpuMs
      writes += result.writes
      log(`${name} round ${r}: ${result.eventsPerSecond.toFixed(0)} ev/s, ${(result.serverCpuMs * 1000 / result.frames).toFixed(2)} µs CPU/event (${
        (result.serverSystemMs * 1000 / result.frames).toFixed(2)
      } system), ${
        (result.writes / result.frames).toFixed(3)
      } write syscalls/event`)
    }
    const toMicros = (await probe(target, false)).monotonicMicros
    let syscalls = ""
    if (straceOn) {
      // one more round under strace, after the profiled window: ptrace slows every syscall, so it must not skew the profile
      const output = join(workDir, `${name}.strace`)
      const strace = spawn("strace", ["-c", "-f", "-p", String(target.server.pid), "-o", output], { stdio: "ignore" })
      const exited = new Promise((r) => strace.once("exit", r))
      await new Promise((r) => setTimeout(r, 500))
      const traced = await round(target)
      strace.kill("SIGINT")
      await exited
      const calls = parseStrace(readFileSync(output, "utf8"))
      const total = [...calls.values()].reduce((s, v) => s + v, 0)
      const top = [...calls.entries()].sort((x, y) => y[1] - x[1]).slice(0, 8)
      syscalls = [
        `Syscalls per delivered event (strace -c -f over one more round, ${traced.frames} events, ${
          (traced.eventsPerSecond).toFixed(0)
        } ev/s under strace): ${(total / traced.frames).toFixed(3)} in all`,
        ...top.map(([k, v]) => `  ${(v / traced.frames).toFixed(3).padStart(7)}  ${k} (${v})`)
      ].join("\n")
    }
    await stop(target.loadgen, "SIGKILL")
    // SIGINT: both servers exit cleanly on it, so Node writes the profile on exit
    await stop(target.server, "SIGINT", 10_000)
    const summary = summarizeProfile(JSON.parse(readFileSync(join(profileDir, file), "utf8")), 25, { fromMicros, toMicros })
    out.push(
      `=== ${name}, ${profileWorkload} load, ${rounds} measured rounds: ${(cpuMs * 1000 / frames).toFixed(2)} µs server CPU per delivered event, ${
        (writes / frames).toFixed(3)
      } write syscalls per event (/proc/<pid>/io)`,
      summary,
      syscalls,
      `profile: ${join(profileDir, file)}`,
      ""
    )
  }
  process.stdout.write(`${out.join("\n")}\n`)
}

/** `--paced-only`: the paced rounds alone, for iterating on the per-event cost. */
const pacedOnlyRun = async () => {
  log(`pinning: ${pinning.description}; paced rounds only`)
  const names: Array<TargetName> = ["agentwire", "baseline", "uncorked"]
  const targets: Array<Target> = []
  for (const [i, name] of names.entries()) {
    const server = await startServer(name)
    targets.push({ name, ...server, loadgen: await startLoadgen(name, server.port, `127.0.${i + 1}.`) })
  }
  for (const target of targets) {
    const reply = await connect(target, params.pacedConnections, params.pacedUsers, 0, "load")
    if (!reply.ok) throw new Error(`${target.name}: paced connections: ${reply.error ?? "failed"}`)
  }
  const paced = await alternate(targets, params.pacedRounds, pacedRound, "paced")
  const m = (name: TargetName) => pacedResults(paced.get(name)!).median
  const [a, b, u] = [m("agentwire"), m("baseline"), m("uncorked")]
  const row = (label: string, f: (r: PacedRound) => string) => `| ${label} | ${f(a)} | ${f(b)} | ${f(u)} |`
  process.stdout.write([
    `Paced, median of ${params.pacedRounds} rounds; agentwire log level ${params.logLevel}; agentwire / corked CPU per event: ${
      (a.serverCpuMicrosPerEvent / b.serverCpuMicrosPerEvent).toFixed(2)
    }`,
    "| | agentwire | corked | uncorked |",
    "|---|---:|---:|---:|",
    row("server CPU µs / event", (r) => r.serverCpuMicrosPerEvent.toFixed(2)),
    row("of which system", (r) => r.serverSystemMicrosPerEvent.toFixed(2)),
    row("main thread's share of it", (r) => r.mainThreadShare.toFixed(2)),
    row("write syscalls / event", (r) => r.writesPerEvent.toFixed(3)),
    row("event latency p50 / p99 ms", (r) => `${r.eventLatencyP50} / ${r.eventLatencyP99}`),
    row("run start p99 ms", (r) => r.startLatencyP99.toFixed(2)),
    row("server CPU share", (r) => r.serverCpuShare.toFixed(2)),
    ""
  ].join("\n"))
}

/** `--runlog-fill=<n>`: bursts of RUNLOG_FILL_RUNS × RUNLOG_FILL_STEPS events per server before the measured rounds (default 4). */
const runlogFill = Number(argv.find((a) => a.startsWith("--runlog-fill="))?.slice("--runlog-fill=".length) ?? "4")
const RUNLOG_FILL_STEPS = 2000

/**
 * A distribution-free confidence interval of the median of `xs` (order statistics of a
 * binomial(n, ½)), at least `level`: `[lo, hi]`, or NaNs when there are too few values.
 */
const medianInterval = (xs: ReadonlyArray<number>, level = 0.95): readonly [number, number] => {
  const sorted = [...xs].sort((a, b) => a - b)
  const n = sorted.length
  // P(X <= k) for X ~ binomial(n, 1/2)
  let cumulative = 0
  let choose = 1
  let k = -1
  for (let i = 0; i <= n; i++) {
    cumulative += choose / 2 ** n
    if (cumulative > (1 - level) / 2) break
    k = i
    choose = (choose * (n - i)) / (i + 1)
  }
  // [x_(k+1), x_(n-k)] in 1-based order statistics covers the median with probability >= level
  if (k < 0) return [Number.NaN, Number.NaN]
  return [sorted[k]!, sorted[n - 1 - k]!]
}

/**
 * `--runlog`: agentwire with its in-memory run log against the same build whose log keeps nothing
 * (`bench/agentwire-nolog.ts`), and the corked baseline, under the paced then the burst load.
 *
 * First every server gets `--runlog-fill` bursts of 100 runs × 2,000 events on the paced connections,
 * enough to fill the log's default 256 MiB budget, so that the measured rounds see a log in its steady
 * state under sustained load (full, evicting the oldest finished runs; `--runlog-fill=0` starts empty
 * and the log grows during the rounds instead). Then the rounds: the two agentwire processes always
 * run next to each other, in turn first (agentwire, no log, baseline; then baseline, no log,
 * agentwire; …), so each round of one has a neighbour of the other for a paired difference.
 *
 * Prints server CPU per delivered event for each, the with / without ratio, the difference per
 * delivered event and per logged event (a logged event is delivered to every socket of its user: ×
 * sockets per user), the median of the paired per-round differences with its 95 % interval, and each
 * server's heap after a forced GC at each step (what the log retains).
 */
const runlogRun = async () => {
  log(`pinning: ${pinning.description}; run log on vs off, ${runlogFill} fill bursts, ${params.pacedRounds} paced and ${params.rounds} burst rounds`)
  const started = new Date().toISOString()
  const info = machine()
  const names: Array<TargetName> = ["agentwire", "agentwire-nolog", "baseline"]
  const targets: Array<Target> = []
  for (const [i, name] of names.entries()) {
    const server = await startServer(name)
    targets.push({ name, ...server, loadgen: await startLoadgen(name, server.port, `127.0.${i + 1}.`) })
  }
  const [withLog, withoutLog, baseline] = targets as [Target, Target, Target]
  const pairedOrder = (r: number) => r % 2 === 0 ? [withLog, withoutLog, baseline] : [baseline, withoutLog, withLog]
  for (const target of targets) {
    const reply = await connect(target, params.pacedConnections, params.pacedUsers, 0, "load")
    if (!reply.ok) throw new Error(`${target.name}: paced connections: ${reply.error ?? "failed"}`)
  }
  const heaps = new Map<string, Map<TargetName, number>>()
  const readHeaps = async (label: string) => {
    const m = new Map<TargetName, number>()
    for (const target of targets) m.set(target.name, (await probe(target, true)).heapUsed)
    heaps.set(label, m)
  }
  await readHeaps("JS heap after GC, connections open, MiB")
  for (let i = 0; i < runlogFill; i++) {
    for (const target of targets) {
      check(
        target,
        "fill burst",
        await command<RunsReply>(
          target,
          { cmd: "burst", id: newRequestId(), runs: params.pacedUsers, steps: RUNLOG_FILL_STEPS, timeoutMs: PHASE_TIMEOUT_MS * 2 },
          PHASE_TIMEOUT_MS * 2 + 5000
        )
      )
    }
    log(`  fill burst ${i + 1} of ${runlogFill} done`)
  }
  if (runlogFill > 0) await readHeaps(`JS heap after GC after filling (${runlogFill} × ${params.pacedUsers} runs × ${RUNLOG_FILL_STEPS + 2} events), MiB`)
  const paced = await alternate(targets, params.pacedRounds, pacedRound, "paced", pairedOrder)
  await readHeaps("JS heap after GC after the paced rounds, MiB")
  const more = params.connections - params.pacedConnections
  for (const target of targets) {
    if (more === 0) break
    const reply = await connect(target, more, params.users - params.pacedUsers, params.pacedUsers, "load")
    if (!reply.ok) throw new Error(`${target.name}: load connections: ${reply.error ?? "failed"}`)
  }
  const burst = await alternate(targets, params.rounds, burstRound, "burst", pairedOrder)
  await readHeaps("JS heap after GC at the end, MiB")

  const perEvent = (r: Round) => (r.serverCpuMs * 1000) / r.frames
  const perEventSystem = (r: Round) => (r.serverSystemMs * 1000) / r.frames
  const summarize = (rounds: Map<TargetName, Array<Round>>) => {
    const of = (name: TargetName) => rounds.get(name)!
    const frames = (name: TargetName) => of(name).reduce((s, r) => s + r.frames, 0)
    const cpu = (name: TargetName) => of(name).reduce((s, r) => s + r.serverCpuMs, 0)
    const stats = (name: TargetName) => ({
      medianMicrosPerEvent: median(of(name).map(perEvent)),
      medianSystemMicrosPerEvent: median(of(name).map(perEventSystem)),
      overallMicrosPerEvent: (cpu(name) * 1000) / frames(name),
      medianEventsPerSecond: median(of(name).map((r) => r.eventsPerSecond)),
      rounds: of(name).map(perEvent)
    })
    const on = of("agentwire")
    const off = of("agentwire-nolog")
    const pairedDiffs = on.map((r, i) => perEvent(r) - perEvent(off[i]!))
    return {
      agentwire: stats("agentwire"),
      nolog: stats("agentwire-nolog"),
      baseline: stats("baseline"),
      pairedDiffs,
      pairedDiffMedian: median(pairedDiffs),
      pairedDiffInterval: medianInterval(pairedDiffs),
      pairsWhereLogCostMore: pairedDiffs.filter((d) => d > 0).length
    }
  }
  const pacedSummary = summarize(paced)
  const burstSummary = summarize(burst)
  const fanOut = { paced: params.pacedConnections / params.pacedUsers, burst: params.connections / params.users }
  const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1)
  const f2 = (x: number) => x.toFixed(2)
  const rows = (what: "paced" | "burst", s: ReturnType<typeof summarize>) => {
    const n = what === "paced" ? params.pacedRounds : params.rounds
    const k = fanOut[what]
    const [lo, hi] = s.pairedDiffInterval
    const diff = s.agentwire.medianMicrosPerEvent - s.nolog.medianMicrosPerEvent
    return [
      `| **${what === "paced" ? "Paced" : "Burst"}**: server CPU µs per delivered event (median of ${n} rounds) | ${f2(s.agentwire.medianMicrosPerEvent)} | ${
        f2(s.nolog.medianMicrosPerEvent)
      } | ${f2(s.baseline.medianMicrosPerEvent)} | ${f2(s.agentwire.medianMicrosPerEvent / s.nolog.medianMicrosPerEvent)} |`,
      `| ${what}: the same over all rounds (total CPU / total events) | ${f2(s.agentwire.overallMicrosPerEvent)} | ${f2(s.nolog.overallMicrosPerEvent)} | ${
        f2(s.baseline.overallMicrosPerEvent)
      } | ${f2(s.agentwire.overallMicrosPerEvent / s.nolog.overallMicrosPerEvent)} |`,
      `| ${what}: of which system, µs (median of rounds) | ${f2(s.agentwire.medianSystemMicrosPerEvent)} | ${f2(s.nolog.medianSystemMicrosPerEvent)} | ${
        f2(s.baseline.medianSystemMicrosPerEvent)
      } | |`,
      `| ${what}: the log's CPU per delivered event, µs: median of the ${n} paired round differences [95 % interval]; difference of medians | ${
        f2(s.pairedDiffMedian)
      } [${f2(lo)}, ${f2(hi)}]; ${f2(diff)} | | | ${s.pairsWhereLogCostMore} of ${n} pairs > 0 |`,
      `| ${what}: the same per logged event (× ${k} sockets per user), µs | ${f2(s.pairedDiffMedian * k)} [${f2(lo * k)}, ${f2(hi * k)}]; ${f2(diff * k)} | | | |`,
      `| ${what}: events/s delivered (median of rounds) | ${s.agentwire.medianEventsPerSecond.toFixed(0)} | ${s.nolog.medianEventsPerSecond.toFixed(0)} | ${
        s.baseline.medianEventsPerSecond.toFixed(0)
      } | ${f2(s.agentwire.medianEventsPerSecond / s.nolog.medianEventsPerSecond)} |`
    ]
  }
  const table = [
    `Run log on vs off, ${started}, commit ${info.commit}${info.dirty ? " (src modified)" : ""}, command \`${info.command}\`; ${pinning.description}; load average at start ${
      info.loadAverageAtStart.join(" ")
    }, at end ${loadavg().map((l) => l.toFixed(2)).join(" ")}`,
    "",
    "| | agentwire (log) | agentwire, no log | raw `ws`, corked | log / no log |",
    "|---|---:|---:|---:|---:|",
    ...rows("paced", pacedSummary),
    ...rows("burst", burstSummary),
    ...[...heaps].map(([label, m]) => `| ${label} | ${mib(m.get("agentwire")!)} | ${mib(m.get("agentwire-nolog")!)} | ${mib(m.get("baseline")!)} | |`),
    "",
    `per-round CPU µs/event, paced: log ${pacedSummary.agentwire.rounds.map(f2).join(" ")}; no log ${pacedSummary.nolog.rounds.map(f2).join(" ")}`,
    `per-round CPU µs/event, burst: log ${burstSummary.agentwire.rounds.map(f2).join(" ")}; no log ${burstSummary.nolog.rounds.map(f2).join(" ")}`,
    ""
  ].join("\n")
  process.stdout.write(`${table}\n`)
  if (outArg !== undefined) {
    const heapsJson = Object.fromEntries([...heaps].map(([label, m]) => [label, Object.fromEntries(m)]))
    writeFileSync(
      resolve(outArg),
      `${JSON.stringify({ machine: info, params, runlogFill, fanOut, paced: pacedSummary, burst: burstSummary, heaps: heapsJson }, null, 2)}\n`
    )
    log(`wrote ${resolve(outArg)}`)
  }
}

/** The `redis-server` binary for `--cluster`, or an error naming the install command. */
const redisBinary = (): string => {
  for (const candidate of ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]) if (existsSync(candidate)) return candidate
  try {
    const found = execSync("command -v redis-server", { encoding: "utf8", shell: "/bin/sh" }).trim()
    if (found !== "") return found
  } catch {
    // not on PATH
  }
  throw new Error("--cluster needs redis-server (apt-get install -y redis-server)")
}

/**
 * `--cluster`: the multi-instance mode (issue 12). One `redis-server` (no persistence, pinned with the
 * servers, killed by pid), two agentwire instances on it (`AGENTWIRE_REDIS_URL`, each its own data dir,
 * the same secret and lifted limits as every agentwire of the bench), and one in-memory agentwire
 * instance, all on the servers' CPU(s): the cluster gets the same CPU budget as the single instance.
 * One load generator per target; the cluster's spreads each user's sockets over both instances
 * (`bench/loadgen.ts`), so every event crosses Redis to reach the user's sockets on the other
 * instance. Paced then burst rounds, alternated between the two targets (`alternate`). Reports,
 * per load, delivered events/s and CPU µs per delivered event summed over every process of the
 * cluster (instances through the probe, `redis-server` from `/proc/<pid>/stat`), each as a ratio to
 * the single instance, the split by process, and latency (informational).
 */
const clusterRun = async () => {
  const binary = redisBinary()
  log(`pinning: ${pinning.description}; cluster (2 instances + redis-server) vs one in-memory instance, ${params.pacedRounds} paced and ${params.rounds} burst rounds`)
  const started = new Date().toISOString()
  const info = machine()
  const redis: RedisProcess = await spawnRedis({ binary, cpus: pinning.server, logFile: join(workDir, "redis-server.log"), timeoutMs: 10_000 })
  const redisVersion = (() => {
    try {
      return execSync(`${binary} --version`, { encoding: "utf8" }).trim()
    } catch {
      return "unknown"
    }
  })()
  log(`redis-server pid ${redis.pid} on port ${redis.port}`)
  const a = await startServer("cluster-a", [], { AGENTWIRE_REDIS_URL: redis.url })
  const b = await startServer("cluster-b", [], { AGENTWIRE_REDIS_URL: redis.url })
  const single = await startServer("agentwire")
  const cluster: Target = {
    name: "cluster",
    port: a.port,
    server: a.server,
    peers: [b.server],
    foreign: [{ name: "redis-server", pid: redis.pid }],
    loadgen: await startLoadgen("cluster", `${a.port},${b.port}`, "127.0.1.")
  }
  const alone: Target = { name: "agentwire", ...single, loadgen: await startLoadgen("agentwire", single.port, "127.0.2.") }
  const targets = [cluster, alone]
  for (const target of targets) {
    const reply = await connect(target, params.pacedConnections, params.pacedUsers, 0, "load")
    if (!reply.ok) throw new Error(`${target.name}: paced connections: ${reply.error ?? "failed"}`)
  }
  const paced = await alternate(targets, params.pacedRounds, pacedRound, "paced")
  const more = params.connections - params.pacedConnections
  for (const target of targets) {
    if (more <= 0) break
    const reply = await connect(target, more, params.users - params.pacedUsers, params.pacedUsers, "load")
    if (!reply.ok) throw new Error(`${target.name}: load connections: ${reply.error ?? "failed"}`)
  }
  const burst = await alternate(targets, params.rounds, burstRound, "burst")

  const summarize = (rs: ReadonlyArray<Round>) => {
    const frames = rs.reduce((s, r) => s + r.frames, 0)
    const latency = histPercentiles(rs.reduce<SparseHistogram>((h, r) => mergeSparse(h, r.eventLatency), []))
    const byProcess = new Map<string, number>()
    for (const r of rs) for (const [name, ms] of r.cpuByProcess) byProcess.set(name, (byProcess.get(name) ?? 0) + ms)
    return {
      rounds: rs.length,
      frames,
      medianEventsPerSecond: median(rs.map((r) => r.eventsPerSecond)),
      eventsPerSecondByRound: rs.map((r) => r.eventsPerSecond),
      /** total CPU of all rounds / total events, µs */
      cpuMicrosPerEvent: (rs.reduce((s, r) => s + r.serverCpuMs, 0) * 1000) / frames,
      medianCpuMicrosPerEvent: median(rs.map((r) => (r.serverCpuMs * 1000) / r.frames)),
      cpuMicrosPerEventByRound: rs.map((r) => (r.serverCpuMs * 1000) / r.frames),
      cpuMicrosPerEventByProcess: Object.fromEntries([...byProcess].map(([name, ms]) => [name, (ms * 1000) / frames])),
      writesPerEvent: rs.reduce((s, r) => s + r.writes, 0) / frames,
      cpuShare: rs.reduce((s, r) => s + r.serverCpuMs, 0) / rs.reduce((s, r) => s + r.elapsedMs, 0),
      eventLatencyP50: latency.p50,
      eventLatencyP99: latency.p99,
      startLatencyP99: samplePercentiles(rs.flatMap((r) => r.startLatency)).p99
    }
  }
  const loads = {
    paced: { cluster: summarize(paced.get("cluster")!), single: summarize(paced.get("agentwire")!) },
    burst: { cluster: summarize(burst.get("cluster")!), single: summarize(burst.get("agentwire")!) }
  }
  const f2 = (x: number) => x.toFixed(2)
  const rows = (what: "paced" | "burst") => {
    const { cluster: c, single: s } = loads[what]
    const n = what === "paced" ? params.pacedRounds : params.rounds
    const split = Object.entries(c.cpuMicrosPerEventByProcess).map(([name, us]) => `${name} ${f2(us)}`).join(", ")
    return [
      `| **${what === "paced" ? "Paced" : "Burst"}**: delivered events/s (median of ${n} rounds) | ${c.medianEventsPerSecond.toFixed(0)} | ${
        s.medianEventsPerSecond.toFixed(0)
      } | ${f2(c.medianEventsPerSecond / s.medianEventsPerSecond)} |`,
      `| ${what}: CPU µs per delivered event, all processes (total CPU / total events) | ${f2(c.cpuMicrosPerEvent)} | ${f2(s.cpuMicrosPerEvent)} | ${
        f2(c.cpuMicrosPerEvent / s.cpuMicrosPerEvent)
      } |`,
      `| ${what}: the same, median of rounds | ${f2(c.medianCpuMicrosPerEvent)} | ${f2(s.medianCpuMicrosPerEvent)} | ${
        f2(c.medianCpuMicrosPerEvent / s.medianCpuMicrosPerEvent)
      } |`,
      `| ${what}: of which, by process, µs | ${split} | | |`,
      `| ${what}: write syscalls per event, all processes | ${c.writesPerEvent.toFixed(3)} | ${s.writesPerEvent.toFixed(3)} | ${
        f2(c.writesPerEvent / s.writesPerEvent)
      } |`,
      `| ${what}: server CPU busy share (CPU ms / wall ms) | ${f2(c.cpuShare)} | ${f2(s.cpuShare)} | |`,
      `| ${what}: event latency p50 / p99 ms, run start p99 ms (informational) | ${c.eventLatencyP50} / ${c.eventLatencyP99}, ${f2(c.startLatencyP99)} | ${
        s.eventLatencyP50
      } / ${s.eventLatencyP99}, ${f2(s.startLatencyP99)} | |`
    ]
  }
  const table = [
    `Cluster vs one instance, ${started}, commit ${info.commit}${info.dirty ? " (src modified)" : ""}, command \`${info.command}\`; ${pinning.description}; ${redisVersion}; load average at start ${
      info.loadAverageAtStart.join(" ")
    }, at end ${loadavg().map((l) => l.toFixed(2)).join(" ")}`,
    `paced: ${params.pacedRuns} runs × ${params.pacedSteps} steps ${params.pacedIntervalMs} ms apart over ${params.pacedSpreadMs} ms, ${params.pacedConnections} sockets of ${params.pacedUsers} users; burst: ${params.runs} runs × ${params.steps} steps over ${params.connections} sockets of ${params.users} users; cluster: each user's sockets alternate between the two instances`,
    "",
    "| | cluster: 2 instances + redis-server | one in-memory instance | cluster / one |",
    "|---|---:|---:|---:|",
    ...rows("paced"),
    ...rows("burst"),
    "",
    `per-round CPU µs/event, paced: cluster ${loads.paced.cluster.cpuMicrosPerEventByRound.map(f2).join(" ")}; one ${
      loads.paced.single.cpuMicrosPerEventByRound.map(f2).join(" ")
    }`,
    `per-round events/s, burst: cluster ${loads.burst.cluster.eventsPerSecondByRound.map((x) => x.toFixed(0)).join(" ")}; one ${
      loads.burst.single.eventsPerSecondByRound.map((x) => x.toFixed(0)).join(" ")
    }`,
    ""
  ].join("\n")
  process.stdout.write(`${table}\n`)
  if (outArg !== undefined) {
    writeFileSync(resolve(outArg), `${JSON.stringify({ machine: info, params, redisVersion, pinning: pinning.description, ...loads }, null, 2)}\n`)
    log(`wrote ${resolve(outArg)}`)
  }
  for (const target of targets) await stop(target.loadgen, "SIGKILL")
  for (const server of [a.server, b.server, single.server]) await stop(server)
  await redis.stop()
}

/** `--keep-logs`: say where the servers' and load generators' logs are; else remove them. */
const keepOrRemoveLogs = () => {
  if (argv.includes("--keep-logs")) log(`server and load generator logs kept in ${workDir}`)
  else rmSync(workDir, { recursive: true, force: true })
}

const main = async () => {
  // the orchestrator shares the load generators' CPU(s), never the server's
  if (pinning.client !== undefined) execSync(`taskset -pc ${pinning.client} ${process.pid}`, { stdio: "ignore" })
  if (profile) {
    await profileRun()
    keepOrRemoveLogs()
    return
  }
  if (pacedOnly) {
    await pacedOnlyRun()
    keepOrRemoveLogs()
    return
  }
  if (clusterMode) {
    await clusterRun()
    keepOrRemoveLogs()
    log(`done in ${((performance.now() - t0) / 1000).toFixed(1)}s`)
    return
  }
  if (runlogMode) {
    await runlogRun()
    keepOrRemoveLogs()
    log(`done in ${((performance.now() - t0) / 1000).toFixed(1)}s`)
    return
  }
  const results = await benchmark()
  process.stdout.write(`${printTable(results)}\n`)
  const json = outArg !== undefined
    ? resolve(outArg)
    : write
    ? join(root, "bench", "results", "latest.json")
    : quick
    ? join(root, "bench", "results", "quick.json")
    : undefined
  const files = writeResults(results, root, { json, docs: write })
  for (const file of files) log(`wrote ${file}`)
  keepOrRemoveLogs()
  log(`done in ${((performance.now() - t0) / 1000).toFixed(1)}s`)
}

main().then(
  () => {
    killAll()
    process.exit(0)
  },
  (error: unknown) => {
    log(`FAILED: ${error instanceof Error ? error.message : String(error)}`)
    log(`server and load generator logs: ${workDir}`)
    killAll()
    process.exit(1)
  }
)
