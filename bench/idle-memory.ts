/**
 * `npm exec -- node bench/idle-memory.ts [--connections=5000] [--reps=3]
 *   [--agentwire=<name>=<checkout>]… [--baseline=<name>=<file>]… [--reduce] [--snapshot] [--pin] [--server-node-flag=<flag>]…
 *   [--agentwire-env=<NAME>=<value>]…`:
 * memory per idle connection, agentwire against the corked raw `ws` baseline,
 * in the same run (issue 9). The same measure as step 1 of `npm run bench`:
 * on a fresh server, RSS (read from `/proc`) and JS heap after two forced GCs,
 * before and after opening `connections` idle sockets (4 per user), over
 * `connections`.
 *
 * Each repetition starts every server afresh (each agentwire checkout named by
 * `--agentwire=<name>=<dir>`, default `agentwire=.`, and each baseline named by
 * `--baseline=<name>=<file>`, default `baseline=bench/baseline-server.ts`; ratios
 * are to the first), measures them one after the other (the order rotated
 * each repetition), then stops them. Prints each repetition and the medians, in KiB per connection.
 *
 * Each repetition also shows the growth of the young generation's pages
 * (`new_space`, physical) per connection: two full GCs do not give them back,
 * so they are part of the RSS figure. They depend on how large the young
 * generation was and grew (agentwire's startup already takes it to a 64 MiB
 * semi-space, the baseline's is 1 MiB until the connection burst), not on
 * what the connections hold; it is most of the RSS difference between the
 * servers. Physical pages are not all resident, so RSS less this growth is not
 * a clean figure either.
 *
 * `--reduce`: each reading follows V8's memory-reducing ("last-resort") GC
 * instead of the bench's two full GCs. A full GC leaves the young generation
 * as large as the connection burst grew it (tens of MiB, whatever the
 * connections hold); the memory-reducing one shrinks it back, so RSS shows what
 * the connections retain.
 *
 * `--snapshot[ --snapshot-rows=60]`: also writes a heap snapshot of each server
 * before and after the sockets open (first repetition only), and prints what
 * grew per connection (`bench/heap-diff.ts`: count and self size by kind of
 * object), biggest first. The snapshots are left in the temp directory printed
 * at the start. Writing a snapshot grows RSS: with `--snapshot`, the RSS
 * figures of the first repetition are not comparable.
 *
 * @module
 */
import { mkdtempSync, readdirSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { availableParallelism } from "node:os"
import { join, resolve } from "node:path"
import {
  choosePinning,
  type Child,
  firstMessage,
  freePort,
  killAll,
  killChildrenOnExit,
  newRequestId,
  rssOf,
  spawnNode,
  stop,
  waitForHttp
} from "./proc.ts"
import * as HeapDiff from "./heap-diff.ts"
import { BENCH_SECRET, type ConnectReply, type LoadCommand, median, type ProbeCommand, type ProbeReply } from "./shared.ts"

const root = resolve(import.meta.dirname, "..")
const argv = process.argv.slice(2)
const num = (name: string, fallback: number) => {
  const hit = argv.find((a) => a.startsWith(`--${name}=`))
  const value = hit === undefined ? fallback : Number(hit.slice(name.length + 3))
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} must be a positive number`)
  return value
}
const connections = num("connections", 5000)
const reps = num("reps", 3)
const snapshot = argv.includes("--snapshot")
/** `--reduce`: read memory after a memory-reducing GC (young generation shrunk back) instead of two full GCs. */
const reduce = argv.includes("--reduce")
const snapshotRows = num("snapshot-rows", 60)
const variants = argv.filter((a) => a.startsWith("--agentwire=")).map((a) => {
  const [name, dir] = a.slice("--agentwire=".length).split("=")
  if (name === undefined || dir === undefined) throw new Error(`--agentwire=<name>=<dir>, got ${a}`)
  return { name, dir: resolve(dir) }
})
if (variants.length === 0) variants.push({ name: "agentwire", dir: root })
const baselines = argv.filter((a) => a.startsWith("--baseline=")).map((a) => {
  const [name, file] = a.slice("--baseline=".length).split("=")
  if (name === undefined || file === undefined) throw new Error(`--baseline=<name>=<file>, got ${a}`)
  return { name, file: resolve(file) }
})
if (baselines.length === 0) baselines.push({ name: "baseline", file: join(root, "bench/baseline-server.ts") })
// memory needs no pinning, and on a shared machine CPU 0 is where every bench pins its servers
/** `--agentwire-env=<NAME>=<value>` (repeatable): extra environment for the agentwire servers, e.g. `AGENTWIRE_LOG_LEVEL=warn`. */
const agentwireEnv = Object.fromEntries(argv.filter((a) => a.startsWith("--agentwire-env=")).map((a) => {
  const [name, ...value] = a.slice("--agentwire-env=".length).split("=")
  return [name!, value.join("=")]
}))
/** `--server-node-flag=<flag>` (repeatable): extra Node flags for every server, e.g. `--trace-gc`. */
const serverNodeFlags = argv.filter((a) => a.startsWith("--server-node-flag=")).map((a) => a.slice("--server-node-flag=".length))
const pinning = choosePinning(availableParallelism(), argv.includes("--pin"))
const SOCKETS_PER_USER = 4
const NOFILE = 200_000
const workDir = mkdtempSync(join(tmpdir(), "agentwire-idle-"))
const log = (line: string) => process.stderr.write(`[idle ${((performance.now() - t0) / 1000).toFixed(1)}s] ${line}\n`)
const t0 = performance.now()

killChildrenOnExit()

interface Server {
  readonly name: string
  readonly server: Child
  readonly loadgen: Child
  /** Where `--heapsnapshot-signal` writes (the server's cwd). */
  readonly cwd: string
}

/** `dir`: an agentwire checkout; `baselineFile`: a baseline server script instead. */
const start = async (name: string, dir: string | undefined, rep: number, baselineFile?: string): Promise<Server> => {
  const port = await freePort()
  const cwd = mkdtempSync(join(workDir, `${name}-${rep}-`))
  const flags = ["--expose-gc", "--import", join(root, "bench/probe.ts"), ...(snapshot ? ["--heapsnapshot-signal=SIGUSR2"] : []), ...serverNodeFlags]
  const server = dir !== undefined
    ? spawnNode({
      name,
      cwd,
      cpus: pinning.server,
      nofile: NOFILE,
      logFile: join(cwd, "server.log"),
      args: [...flags, join(dir, "src/main.ts")],
      env: {
        AGENTWIRE_HOST: "127.0.0.1",
        AGENTWIRE_PORT: String(port),
        AGENTWIRE_DATA_DIR: join(cwd, "data"),
        AGENTWIRE_JWT_SECRET: BENCH_SECRET,
        AGENTWIRE_LOG_LEVEL: "info",
        AGENTWIRE_MAX_MESSAGE_BYTES: "65536",
        AGENTWIRE_HEARTBEAT_MS: "0",
        AGENTWIRE_MAX_RUNS_PER_USER: "10000",
        AGENTWIRE_MAX_RUNS: "1000000",
        AGENTWIRE_RUN_STARTS_PER_SECOND: "0",
        AGENTWIRE_MAX_FRAMES_PER_SECOND: "0",
        AGENTWIRE_MAX_CONNECTIONS_PER_USER: "10000",
        NODE_ENV: "production",
        ...agentwireEnv
      }
    })
    : spawnNode({
      name,
      cwd,
      cpus: pinning.server,
      nofile: NOFILE,
      logFile: join(cwd, "server.log"),
      args: [...flags, baselineFile ?? join(root, "bench/baseline-server.ts")],
      env: {
        BASELINE_HOST: "127.0.0.1",
        BASELINE_PORT: String(port),
        BASELINE_JWT_SECRET: BENCH_SECRET,
        BASELINE_MAX_MESSAGE_BYTES: "65536",
        BASELINE_CORK: "1"
      }
    })
  await waitForHttp(port, "/health", 180_000, server)
  const loadgen = spawnNode({
    name: `loadgen(${name})`,
    cwd: root,
    cpus: pinning.client,
    nofile: NOFILE,
    logFile: join(cwd, "loadgen.log"),
    args: [join(root, "bench/loadgen.ts"), String(port), "127.0.5."]
  })
  await firstMessage(loadgen, 120_000)
  return { name, server, loadgen, cwd }
}

const probe = async (s: Server): Promise<ProbeReply> => {
  const message: ProbeCommand = { probe: "stats", id: newRequestId(), gc: true, reduce }
  const reply = await s.server.request<ProbeReply>(message, 30_000)
  return { ...reply, rss: rssOf(s.server.pid) }
}

/** Writes a heap snapshot (SIGUSR2) and waits until its file stops growing. */
const heapSnapshot = async (s: Server): Promise<string> => {
  const before = new Set(readdirSync(s.cwd))
  process.kill(s.server.pid, "SIGUSR2")
  // the probe answers only once the main thread is done writing
  await probe(s)
  for (;;) {
    const file = readdirSync(s.cwd).find((f) => f.endsWith(".heapsnapshot") && !before.has(f))
    if (file !== undefined) {
      const path = join(s.cwd, file)
      const size = statSync(path).size
      await new Promise((r) => setTimeout(r, 300))
      if (statSync(path).size === size && size > 0) return path
    } else {
      await new Promise((r) => setTimeout(r, 100))
    }
  }
}

interface Reading {
  /** RSS with the sockets open, MiB. */
  readonly rssMiBAfter: number
  readonly rssKiB: number
  readonly heapKiB: number
  /** Heap pages V8 holds (physical), used or not. */
  readonly committedKiB: number
  readonly externalKiB: number
  /** Growth of the young generation's pages (V8's `new_space`, physical), per connection. */
  readonly newSpaceKiB: number
}

const measure = async (s: Server, doSnapshot: boolean): Promise<Reading> => {
  const before = await probe(s)
  const snapBefore = doSnapshot ? await heapSnapshot(s) : undefined
  const command: LoadCommand = { cmd: "connect", id: newRequestId(), count: connections, users: connections / SOCKETS_PER_USER, userBase: 100_000, role: "idle" }
  const reply = await s.loadgen.request<ConnectReply>(command, 240_000)
  if (!reply.ok) throw new Error(`${s.name}: idle connections: ${reply.error ?? "failed"}`)
  const after = await probe(s)
  const spaces = Object.keys(after.heapSpaces ?? {})
    .map((k) => [k, ((after.heapSpaces?.[k] ?? 0) - (before.heapSpaces?.[k] ?? 0)) / connections / 1024] as const)
    .filter(([, v]) => Math.abs(v) >= 0.05)
  const mib = (r: ProbeReply, k: string) => ((r.heapSpaces?.[k] ?? Number.NaN) / 1048576).toFixed(1)
  log(`${s.name}: heap pages per connection by space, KiB: ${spaces.map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ")} (new space ${
    mib(before, "new_space")
  } -> ${mib(after, "new_space")} MiB, old space ${mib(before, "old_space")} -> ${mib(after, "old_space")} MiB)`)
  if (snapBefore !== undefined) {
    const snapAfter = await heapSnapshot(s)
    HeapDiff.print(`${s.name}: heap snapshot growth per connection (${snapBefore}, ${snapAfter})`, HeapDiff.diff(HeapDiff.census(snapBefore), HeapDiff.census(snapAfter), connections), snapshotRows)
  }
  return {
    rssMiBAfter: after.rss / 1048576,
    rssKiB: (after.rss - before.rss) / connections / 1024,
    heapKiB: (after.heapUsed - before.heapUsed) / connections / 1024,
    committedKiB: ((after.heapCommitted ?? Number.NaN) - (before.heapCommitted ?? Number.NaN)) / connections / 1024,
    externalKiB: (after.external - before.external) / connections / 1024,
    newSpaceKiB: ((after.heapSpaces?.["new_space"] ?? Number.NaN) - (before.heapSpaces?.["new_space"] ?? Number.NaN)) / connections / 1024
  }
}

const main = async () => {
  log(`${connections} idle connections, ${reps} repetitions, ${reduce ? "memory-reducing GC" : "two full GCs"} before each reading; ${argv.includes("--pin") ? pinning.description : "not pinned (--pin to pin)"}; files in ${workDir}`)
  const names = [...variants.map((v) => v.name), ...baselines.map((b) => b.name)]
  const results = new Map<string, Array<Reading>>(names.map((n) => [n, []]))
  for (let rep = 0; rep < reps; rep++) {
    const servers = await Promise.all([
      ...variants.map((v) => start(v.name, v.dir, rep)),
      ...baselines.map((b) => start(b.name, undefined, rep, b.file))
    ])
    const order = [...servers.slice(rep % servers.length), ...servers.slice(0, rep % servers.length)]
    for (const s of order) {
      const r = await measure(s, snapshot && rep === 0)
      results.get(s.name)!.push(r)
      log(`rep ${rep + 1} ${s.name}: RSS ${r.rssMiBAfter.toFixed(0)} MiB with the sockets open; ${r.rssKiB.toFixed(1)} KiB RSS, ${r.heapKiB.toFixed(1)} KiB heap (${r.committedKiB.toFixed(1)} committed), ${
        r.externalKiB.toFixed(2)
      } KiB external per connection`)
    }
    await Promise.all(servers.flatMap((s) => [stop(s.loadgen, "SIGKILL"), stop(s.server, "SIGTERM")]))
  }
  const base = results.get(baselines[0]!.name)!
  const baseRss = median(base.map((r) => r.rssKiB))
  console.log(`\nper idle connection, KiB (median of ${reps}; ${connections} connections, 4 per user)`)
  const baseHeap = median(base.map((r) => r.heapKiB))
  console.log("server                 RSS    heap   RSS / baseline   heap / baseline   each RSS (heap) [young gen]")
  for (const name of names) {
    const rs = results.get(name)!
    const rss = median(rs.map((r) => r.rssKiB))
    const heap = median(rs.map((r) => r.heapKiB))
    console.log(
      `${name.padEnd(18)} ${rss.toFixed(1).padStart(7)} ${heap.toFixed(1).padStart(7)} ${(rss / baseRss).toFixed(2).padStart(16)} ${
        (heap / baseHeap).toFixed(2).padStart(17)
      }   ${rs.map((r) => `${r.rssKiB.toFixed(1)} (${r.heapKiB.toFixed(1)}) [${r.newSpaceKiB.toFixed(1)}]`).join(", ")}`
    )
  }
  console.log(
    "[young gen]: growth of V8's young-generation pages (new_space, physical) in that repetition; a full GC does not give\n" +
      "them back, so with two full GCs they are part of the RSS figure whatever the connections hold"
  )
}

main().then(
  () => {
    killAll()
    process.exit(0)
  },
  (error) => {
    console.error(error)
    killAll()
    process.exit(1)
  }
)
