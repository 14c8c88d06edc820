/**
 * The run log on Redis against the in-memory one: append latency and CPU per
 * event, in one process, with a real `redis-server` on a free loopback port
 * (started and stopped here, no persistence).
 *
 * Run: `npm exec -- node bench/runlog-redis.ts` (about 20 s; needs `redis-server`).
 *
 * Load: runs shaped like the bench's paced run (`agent_started`, 40 ×
 * `agent_thinking`, `agent_completed`, frames as the emitter encodes them),
 * appended through `RunLog.append` (the Effect path the emitter takes when the
 * log has no `appendSync`):
 * - **sequential**: one run at a time, one append at a time: per-append latency
 *   (one round trip for Redis);
 * - **concurrent**: 64 runs at once, each appending in order (as 64 live runs
 *   do): events/s, and CPU per event of this process and of `redis-server`
 *   (from /proc, utime + stime).
 * Latency percentiles are of single appends in the sequential load.
 *
 * @module
 */
import { readFileSync } from "node:fs"
import { Context, Effect, Layer, Redacted } from "effect"
import { DEFAULT_RUN_LOG_SETTINGS } from "../src/layers/AgentwireConfig.ts"
import * as RunLogMemory from "../src/layers/RunLogMemory.ts"
import * as RunLogRedis from "../src/layers/RunLogRedis.ts"
import type { AgentEvent } from "../src/protocol/Protocol.ts"
import { RunLog } from "../src/services/RunLog.ts"
import { startRedis } from "../test/fixtures/redisServer.ts"

const SETTINGS = { ...DEFAULT_RUN_LOG_SETTINGS, maxBytes: 4 * 1024 ** 3 }
const THINKING = 40

const runEvents = (n: number): Array<{ event: AgentEvent; frame: string }> => {
  const run_id = `run_${crypto.randomUUID().replaceAll("-", "")}`
  const thread_id = `thread_${crypto.randomUUID().replaceAll("-", "")}`
  const user_id = `user-${n % 100}`
  const out: Array<{ event: AgentEvent; frame: string }> = []
  const total = THINKING + 2
  for (let seq = 1; seq <= total; seq++) {
    const base = { event_id: `${run_id}:${seq}`, run_id, thread_id, user_id, agent_name: "ticker", depth: 0, seq, timestamp: new Date().toISOString() }
    const event: AgentEvent = seq === 1
      ? { ...base, type: "agent_started", task_description: "steps=40 interval_ms=50" }
      : seq === total
      ? { ...base, type: "agent_completed", status: "completed", final_response: "ticked 40 times", duration_ms: 2000 }
      : { ...base, type: "agent_thinking", reasoning: `tick ${seq - 1} of ${THINKING}`, step_number: seq - 1 }
    out.push({ event, frame: JSON.stringify(event) })
  }
  return out
}

const procCpuMs = (pid: number | undefined): number => {
  if (pid === undefined) return 0
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  // utime, stime are fields 14, 15 (1-based) of the whole line: 12, 13 after "pid (comm) "
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100
}

const pct = (sorted: ReadonlyArray<number>, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!

const measure = (name: string, layer: Layer.Layer<RunLog, unknown>, redisPid: () => number | undefined) =>
  Effect.gen(function*() {
    const log = Context.get(yield* Layer.build(layer), RunLog)
    // warm-up
    for (let i = 0; i < 20; i++) for (const { event, frame } of runEvents(i)) yield* log.append(event, frame)

    // sequential
    const seqRuns = Array.from({ length: 100 }, (_, i) => runEvents(i))
    const latencies: Array<number> = []
    const cpu0 = process.cpuUsage()
    const r0 = procCpuMs(redisPid())
    const t0 = performance.now()
    for (const run of seqRuns) {
      for (const { event, frame } of run) {
        const s = performance.now()
        yield* log.append(event, frame)
        latencies.push(performance.now() - s)
      }
    }
    const seqWall = performance.now() - t0
    const seqCpu = process.cpuUsage(cpu0)
    const seqRedis = procCpuMs(redisPid()) - r0
    latencies.sort((a, b) => a - b)
    const nSeq = latencies.length

    // concurrent: 64 runs at once, 10 rounds
    const rounds = 10
    const concurrent = 64
    const batches = Array.from({ length: rounds }, (_, r) => Array.from({ length: concurrent }, (_, i) => runEvents(1000 + r * concurrent + i)))
    const cpu1 = process.cpuUsage()
    const r1 = procCpuMs(redisPid())
    const t1 = performance.now()
    for (const batch of batches) {
      yield* Effect.forEach(batch, (run) => Effect.forEach(run, ({ event, frame }) => log.append(event, frame), { discard: true }), {
        concurrency: "unbounded",
        discard: true
      })
    }
    const conWall = performance.now() - t1
    const conCpu = process.cpuUsage(cpu1)
    const conRedis = procCpuMs(redisPid()) - r1
    const nCon = rounds * concurrent * (THINKING + 2)
    const stats = yield* log.stats
    return {
      name,
      sequential: {
        events: nSeq,
        p50_us: Math.round(pct(latencies, 0.5) * 1000),
        p99_us: Math.round(pct(latencies, 0.99) * 1000),
        mean_us: Math.round((seqWall / nSeq) * 1000),
        node_cpu_us_per_event: Math.round((seqCpu.user + seqCpu.system) / nSeq),
        redis_cpu_us_per_event: Math.round((seqRedis * 1000) / nSeq)
      },
      concurrent: {
        events: nCon,
        events_per_s: Math.round(nCon / (conWall / 1000)),
        node_cpu_us_per_event: Math.round((conCpu.user + conCpu.system) / nCon),
        redis_cpu_us_per_event: Math.round((conRedis * 1000) / nCon)
      },
      bytes_counted_per_event: Math.round(stats.bytes / stats.runs / (THINKING + 2))
    }
  }).pipe(Effect.scoped)

const main = Effect.gen(function*() {
  const server = yield* Effect.promise(() => startRedis())
  yield* Effect.addFinalizer(() => Effect.promise(() => server.stop()))
  const memory = yield* measure("memory", RunLogMemory.layer(SETTINGS), () => undefined)
  const redis = yield* measure(
    "redis",
    RunLogRedis.layer({ url: Redacted.make(server.url), settings: SETTINGS, keyPrefix: "bench:" }),
    server.pid
  )
  console.log(JSON.stringify({ node: process.version, memory, redis }, null, 2))
  const ratio = (a: number, b: number) => (b === 0 ? "∞" : (a / b).toFixed(1))
  console.log(
    `append latency (sequential, p50): memory ${memory.sequential.p50_us} µs, redis ${redis.sequential.p50_us} µs (×${ratio(redis.sequential.p50_us, memory.sequential.p50_us)})\n` +
      `CPU per event (concurrent, node + redis-server): memory ${memory.concurrent.node_cpu_us_per_event} µs, redis ${redis.concurrent.node_cpu_us_per_event} + ${redis.concurrent.redis_cpu_us_per_event} µs\n` +
      `throughput (64 runs at once): memory ${memory.concurrent.events_per_s} events/s, redis ${redis.concurrent.events_per_s} events/s`
  )
}).pipe(Effect.scoped)

Effect.runPromise(main).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
