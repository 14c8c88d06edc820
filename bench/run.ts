/**
 * `npm run bench [-- --quick | --profile] [--no-write] [--out=<file>] [--agentwire-dir=<checkout>]
 *   [--keep-logs] [--server-node-flag=<flag>…]`:
 * the orchestrator.
 *
 * Starts, each in its own process, the agentwire server (`src/main.ts`) and
 * the raw `ws` baseline (`bench/baseline-server.ts`), both with the probe
 * preloaded (`bench/probe.ts`: heap, CPU, forced GC over IPC; RSS is read
 * from `/proc/<pid>/status`), and one load generator (`bench/loadgen.ts`) per
 * server. Then it measures both in the same run, alternating agentwire and
 * baseline round by round so that drift on a shared machine hits both alike:
 *
 * 1. memory first, while the heaps are fresh: RSS per idle connection, then
 *    per active (sleeping) run;
 * 2. fan-out throughput: R concurrent ticker runs (interval 0, K steps) over
 *    C connections of U users, delivered events per second at the clients;
 *    latency at saturation comes from the same rounds;
 * 3. latency and run start at a fixed offered load (open loop): each server
 *    at 50 % of its own maximum, and the faster one again at the slower one's
 *    load, so both are also compared at one offered load;
 * 4. the most idle connections held under 1 GiB RSS, up to the open-files
 *    limit or the bench's cap;
 * 5. engine overhead in-process (`bench/engine.ts`), after the servers are gone.
 *
 * Prints one table; a full run writes `bench/results/latest.json` and the
 * generated part of `docs/benchmarks.md` (`--no-write` skips both; `--out`
 * writes the JSON elsewhere). `--quick`
 * is a smoke run (small sizes, under 30 s) that checks every phase completes
 * and judges no target. `--profile` runs agentwire alone under the throughput
 * load with `--cpu-prof` and prints where the samples of the measured rounds
 * went (`bench/profile.ts`). `--agentwire-dir` runs another checkout's
 * `src/main.ts` (to measure a proposed change against the same baseline).
 *
 * Every wait is bounded; a watchdog ends the bench and every child process
 * (killed by pid) if it runs over.
 *
 * @module
 */
import { execSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { availableParallelism, cpus, release, tmpdir, totalmem } from "node:os"
import { join, resolve } from "node:path"
import type { EngineResult } from "./engine.ts"
import {
  type Child,
  firstMessage,
  freePort,
  killAll,
  newRequestId,
  openFilesLimit,
  rssOf,
  spawnNode,
  stop,
  waitForHttp
} from "./proc.ts"
import { summarizeProfile } from "./profile.ts"
import {
  type BenchResults,
  type FixedLoad,
  type MachineInfo,
  type Params,
  printTable,
  type ServerResults,
  writeResults
} from "./report.ts"
import {
  BENCH_SECRET,
  type ConnectReply,
  type LoadCommand,
  median,
  mergeSparse,
  type ProbeCommand,
  type ProbeReply,
  type RunsReply,
  type SparseHistogram
} from "./shared.ts"

const root = resolve(import.meta.dirname, "..")
const argv = process.argv.slice(2)
const quick = argv.includes("--quick")
const profile = argv.includes("--profile")
const write = !argv.includes("--no-write") && !quick && !profile
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
    loadMs: 1000,
    holdRuns: 100,
    idleConnections: 400,
    idleCap: 2000,
    idleBatch: 800,
    idleBudgetMs: 4000,
    engineMs: 200,
    heartbeatConnections: 1000,
    logLevel: "info"
  }
  : {
    mode: profile ? "profile" : "full",
    connections: flag("connections", 1000),
    users: flag("users", 250),
    runs: flag("runs", 250),
    steps: flag("steps", 200),
    rounds: flag("rounds", 7),
    loadMs: 4000,
    holdRuns: 1000,
    idleConnections: 5000,
    idleCap: flag("idle-cap", 40_000),
    idleBatch: 5000,
    idleBudgetMs: 30_000,
    engineMs: 1000,
    heartbeatConnections: 10_000,
    logLevel: "info"
  }

const WATCHDOG_MS = quick ? 28_000 : 178_000
const GIB = 1024 * 1024 * 1024
const NOFILE = 200_000
const PHASE_TIMEOUT_MS = quick ? 8000 : 30_000

const workDir = mkdtempSync(join(tmpdir(), "agentwire-bench-"))
const log = (line: string) => process.stderr.write(`[bench ${((performance.now() - t0) / 1000).toFixed(1)}s] ${line}\n`)
const t0 = performance.now()

// ---------------------------------------------------------------------------
// cleanup: every child dies with the bench, however it ends

process.on("exit", killAll)
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(signal, () => {
    killAll()
    process.exit(130)
  })
}
const watchdog = setTimeout(() => {
  log(`watchdog: still running after ${WATCHDOG_MS / 1000}s; killing everything`)
  killAll()
  process.exit(1)
}, WATCHDOG_MS)
watchdog.unref()

// ---------------------------------------------------------------------------
// processes

interface Target {
  readonly name: "agentwire" | "baseline"
  readonly port: number
  readonly server: Child
  loadgen: Child
}

/**
 * The heartbeat is off in the compared servers (the baseline has none: it would
 * be wire work the baseline does not do); its cost is measured on a server of
 * its own, `agentwire-heartbeat`, with this interval.
 */
const HEARTBEAT_MS = 2000

const startServer = async (
  name: Target["name"] | "agentwire-heartbeat",
  extraNodeFlags: ReadonlyArray<string> = []
) => {
  const port = await freePort()
  const nodeFlags = ["--expose-gc", "--import", "./bench/probe.ts", ...serverNodeFlags, ...extraNodeFlags]
  const server = name !== "baseline"
    ? spawnNode({
      name,
      cwd: root,
      nofile: NOFILE,
      logFile: join(workDir, `${name}.log`),
      args: [...nodeFlags, join(agentwireDir, "src/main.ts")],
      env: {
        AGENTWIRE_HOST: "127.0.0.1",
        AGENTWIRE_PORT: String(port),
        AGENTWIRE_JWT_SECRET: BENCH_SECRET,
        AGENTWIRE_LOG_LEVEL: params.logLevel,
        AGENTWIRE_MAX_MESSAGE_BYTES: "65536",
        AGENTWIRE_HEARTBEAT_MS: name === "agentwire" ? "0" : String(HEARTBEAT_MS),
        BENCH_LOOP_DELAY: name === "agentwire" ? "0" : "1",
        NODE_ENV: "production"
      }
    })
    : spawnNode({
      name,
      cwd: root,
      nofile: NOFILE,
      logFile: join(workDir, `${name}.log`),
      args: [...nodeFlags, "bench/baseline-server.ts"],
      env: {
        BASELINE_HOST: "127.0.0.1",
        BASELINE_PORT: String(port),
        BASELINE_JWT_SECRET: BENCH_SECRET,
        BASELINE_MAX_MESSAGE_BYTES: "65536"
      }
    })
  await waitForHttp(port, "/health", 30_000, server)
  return { port, server }
}

const startLoadgen = async (name: string, port: number, sourcePrefix: string) => {
  const loadgen = spawnNode({
    name: `loadgen(${name})`,
    cwd: root,
    nofile: NOFILE,
    logFile: join(workDir, `loadgen-${name}.log`),
    args: ["bench/loadgen.ts", String(port), sourcePrefix]
  })
  await firstMessage(loadgen, 30_000)
  return loadgen
}

const probe = async (target: { readonly server: Child }, gc: boolean, resetLoopDelay = false): Promise<ProbeReply> => {
  const message: ProbeCommand = { probe: "stats", id: newRequestId(), gc, resetLoopDelay }
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
  readonly clientCpuMs: number
  readonly eventLatency: SparseHistogram
  readonly startLatency: ReadonlyArray<number>
}

const burstRound = async (target: Target): Promise<Round> => {
  const before = await probe(target, false)
  const reply = check(
    target,
    "throughput round",
    await command<RunsReply>(
      target,
      { cmd: "burst", id: newRequestId(), runs: params.runs, steps: params.steps, timeoutMs: PHASE_TIMEOUT_MS },
      PHASE_TIMEOUT_MS + 5000
    )
  )
  const after = await probe(target, false)
  return {
    eventsPerSecond: reply.frames / (reply.elapsedMs / 1000),
    frames: reply.frames,
    elapsedMs: reply.elapsedMs,
    serverCpuMs: (after.cpuMicros - before.cpuMicros) / 1000,
    clientCpuMs: reply.clientCpuMs,
    eventLatency: reply.eventLatency,
    startLatency: reply.startLatency
  }
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

const idlePhase = async (target: Target) => {
  const before = await probe(target, true)
  const reply = await connect(target, params.idleConnections, params.idleConnections / IDLE_SOCKETS_PER_USER, IDLE_USER_BASE, "idle")
  if (!reply.ok) throw new Error(`${target.name}: idle connections: ${reply.error ?? "failed"}`)
  const after = await probe(target, true)
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
    nproc: availableParallelism(),
    cpu: cpus()[0]?.model ?? "unknown",
    memory: `${(totalmem() / GIB).toFixed(1)} GiB`,
    free: sh("free -h"),
    node: process.version,
    kernel: release(),
    command: `npm run bench${argv.length > 0 ? ` -- ${argv.join(" ")}` : ""}`,
    ...(agentwireDir === root ? {} : { agentwireDir })
  }
}

// ---------------------------------------------------------------------------

const benchmark = async (): Promise<BenchResults> => {
  log(`mode ${params.mode}; logs and temp files in ${workDir}`)
  const info = machine()
  const [aw, bl, hbServer] = await Promise.all([
    startServer("agentwire"),
    startServer("baseline"),
    startServer("agentwire-heartbeat")
  ])
  const targets: Array<Target> = [
    { name: "agentwire", ...aw, loadgen: await startLoadgen("agentwire", aw.port, "127.0.1.") },
    { name: "baseline", ...bl, loadgen: await startLoadgen("baseline", bl.port, "127.0.2.") }
  ]
  const [agentwire, baseline] = targets as [Target, Target]
  log("servers and load generators up")

  // memory first, on processes that have not grown their heaps under load yet
  const idles = { agentwire: await idlePhase(agentwire), baseline: await idlePhase(baseline) }
  const holds = { agentwire: await holdPhase(agentwire), baseline: await holdPhase(baseline) }
  log("memory per idle connection and per active run done")

  for (const target of targets) {
    const reply = await connect(target, params.connections, params.users, 0, "load")
    if (!reply.ok) throw new Error(`${target.name}: load connections: ${reply.error ?? "failed"}`)
  }
  const socketsPerUser = params.connections / params.users
  log(`${params.connections} connections open on each server`)

  // warm-up (JIT, pools), not measured
  for (const target of targets) await burstRound(target)
  const rounds: Record<Target["name"], Array<Round>> = { agentwire: [], baseline: [] }
  for (let r = 0; r < params.rounds; r++) {
    const order = r % 2 === 0 ? targets : [...targets].reverse()
    for (const target of order) rounds[target.name].push(await burstRound(target))
  }
  const maxima = {
    agentwire: median(rounds.agentwire.map((r) => r.eventsPerSecond)),
    baseline: median(rounds.baseline.map((r) => r.eventsPerSecond))
  }
  log(`throughput: agentwire ${maxima.agentwire.toFixed(0)} ev/s, baseline ${maxima.baseline.toFixed(0)} ev/s`)

  // each server at 50 % of its own maximum (the latency target) ...
  const ownLoads = {
    agentwire: await loadPhase(agentwire, maxima.agentwire * 0.5, socketsPerUser),
    baseline: await loadPhase(baseline, maxima.baseline * 0.5, socketsPerUser)
  }
  // ... and the faster one again at the slower one's load, so both latencies are compared at one offered load
  const [slower, faster] = maxima.agentwire <= maxima.baseline ? [agentwire, baseline] : [baseline, agentwire]
  const sameLoads = {
    [slower.name]: ownLoads[slower.name],
    [faster.name]: await loadPhase(faster, maxima[slower.name] * 0.5, socketsPerUser)
  } as Record<Target["name"], FixedLoad>
  log("fixed loads done")

  const ramps = {
    agentwire: await rampPhase(agentwire, params.connections + params.idleConnections),
    baseline: await rampPhase(baseline, params.connections + params.idleConnections)
  }
  log(`idle ramp: agentwire ${ramps.agentwire.connections}, baseline ${ramps.baseline.connections}`)

  await Promise.all(targets.flatMap((t) => [stop(t.loadgen, "SIGKILL"), stop(t.server, "SIGTERM")]))

  const hb = { ...hbServer, loadgen: await startLoadgen("agentwire-heartbeat", hbServer.port, "127.0.3.") }
  const heartbeat = await heartbeatPhase(hb, params.heartbeatConnections)
  log(`heartbeat: longest stall ${heartbeat.maxStallMs.toFixed(1)} ms with ${heartbeat.connections} connections`)
  await Promise.all([stop(hb.loadgen, "SIGKILL"), stop(hb.server, "SIGTERM")])
  const engine = await runEngine()
  log("engine overhead done")

  const serverResults = (target: Target): ServerResults => {
    const rs = rounds[target.name]
    const events = rs.reduce((s, r) => s + r.frames, 0)
    return {
      throughput: {
        eventsPerSecond: median(rs.map((r) => r.eventsPerSecond)),
        rounds: rs.map((r) => r.eventsPerSecond),
        serverCpuMicrosPerEvent: (rs.reduce((s, r) => s + r.serverCpuMs, 0) * 1000) / events,
        clientCpuShare: rs.reduce((s, r) => s + r.clientCpuMs, 0) / rs.reduce((s, r) => s + r.elapsedMs, 0),
        serverCpuShare: rs.reduce((s, r) => s + r.serverCpuMs, 0) / rs.reduce((s, r) => s + r.elapsedMs, 0)
      },
      saturation: {
        eventLatency: rs.reduce<SparseHistogram>((h, r) => mergeSparse(h, r.eventLatency), []),
        startLatency: rs.flatMap((r) => r.startLatency)
      },
      ownLoad: ownLoads[target.name],
      sameLoad: sameLoads[target.name],
      memory: { activeRun: holds[target.name], idle: idles[target.name], maxIdle: ramps[target.name] }
    }
  }

  return {
    machine: info,
    params,
    agentwire: serverResults(agentwire),
    baseline: serverResults(baseline),
    heartbeat,
    engine
  }
}

const profileRun = async () => {
  const profileDir = join(root, "bench", "results", "profiles")
  mkdirSync(profileDir, { recursive: true })
  const server = await startServer("agentwire", ["--cpu-prof", `--cpu-prof-dir=${profileDir}`, "--cpu-prof-name=agentwire.cpuprofile"])
  const target: Target = { name: "agentwire", ...server, loadgen: await startLoadgen("agentwire", server.port, "127.0.1.") }
  const reply = await connect(target, params.connections, params.users, 0, "load")
  if (!reply.ok) throw new Error(`load connections: ${reply.error ?? "failed"}`)
  // round 0 warms up; the profile summary counts only the samples of the measured rounds
  let fromMicros = 0
  for (let r = 0; r <= params.rounds; r++) {
    if (r === 1) fromMicros = (await probe(target, false)).monotonicMicros
    const round = await burstRound(target)
    log(`round ${r}: ${round.eventsPerSecond.toFixed(0)} ev/s, ${(round.serverCpuMs * 1000 / round.frames).toFixed(2)} µs CPU/event`)
  }
  const toMicros = (await probe(target, false)).monotonicMicros
  await stop(target.loadgen, "SIGKILL")
  // SIGINT: the server shuts down cleanly, so Node writes the profile on exit
  await stop(target.server, "SIGINT", 10_000)
  const file = join(profileDir, "agentwire.cpuprofile")
  process.stdout.write(`${summarizeProfile(JSON.parse(readFileSync(file, "utf8")), 25, { fromMicros, toMicros })}\nprofile: ${file}\n`)
}

const main = async () => {
  if (profile) {
    await profileRun()
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
  if (argv.includes("--keep-logs")) log(`server and load generator logs kept in ${workDir}`)
  else rmSync(workDir, { recursive: true, force: true })
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
