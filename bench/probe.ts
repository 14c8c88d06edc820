/**
 * Preloaded (`--import ./bench/probe.ts`) into the servers under test, so the
 * orchestrator can read their memory and CPU over the IPC channel, force a
 * GC (`--expose-gc`) before a memory reading, and (when asked) read the
 * longest event-loop stall. It adds nothing to the request path: one
 * `message` listener, idle between readings.
 *
 * When the orchestrator goes away (IPC disconnect), the server exits.
 *
 * @module
 */
import { readFileSync } from "node:fs"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { getHeapSpaceStatistics, getHeapStatistics } from "node:v8"
import type { ProbeCommand, ProbeReply } from "./shared.ts"

const maxOpenFiles = (): number => {
  try {
    const line = readFileSync("/proc/self/limits", "utf8").split("\n").find((l) => l.startsWith("Max open files"))
    const soft = line?.split(/\s{2,}/)[1]
    return soft === undefined ? Number.NaN : Number(soft)
  } catch {
    return Number.NaN
  }
}

const isProbe = (m: unknown): m is ProbeCommand =>
  typeof m === "object" && m !== null && (m as { probe?: unknown }).probe === "stats"

const gc = (globalThis as { gc?: (options?: { type: "major"; execution: "sync"; flavor: "last-resort" }) => void }).gc

// BENCH_LOOP_DELAY=1: also sample event-loop delay (a 1 ms timer), to see stalls such as a heartbeat sweep
const loopDelay = process.env.BENCH_LOOP_DELAY === "1" ? monitorEventLoopDelay({ resolution: 1 }) : undefined
loopDelay?.enable()
const loopDelayMaxMs = () => loopDelay === undefined ? Number.NaN : loopDelay.max / 1e6

if (process.send !== undefined) {
  process.on("message", (message: unknown) => {
    if (!isProbe(message)) return
    const reply = () => {
      const cpu = process.cpuUsage()
      let out: ProbeReply
      try {
        const mem = process.memoryUsage()
        out = {
          id: message.id,
          rss: mem.rss,
          heapUsed: mem.heapUsed,
          external: mem.external,
          arrayBuffers: mem.arrayBuffers,
          cpuMicros: cpu.user + cpu.system,
          cpuSystemMicros: cpu.system,
          maxOpenFiles: maxOpenFiles(),
          monotonicMicros: Number(process.hrtime.bigint() / 1000n),
          loopDelayMaxMs: loopDelayMaxMs(),
          heapCommitted: getHeapStatistics().total_physical_size,
          heapSpaces: Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, s.physical_space_size]))
        }
      } catch {
        // reading RSS opens /proc/self/stat, which fails when every file descriptor is taken;
        // the orchestrator reads RSS from outside the process anyway
        const heap = getHeapStatistics()
        out = {
          id: message.id,
          rss: Number.NaN,
          heapUsed: heap.used_heap_size,
          external: heap.external_memory,
          arrayBuffers: Number.NaN,
          cpuMicros: cpu.user + cpu.system,
          cpuSystemMicros: cpu.system,
          maxOpenFiles: Number.NaN,
          monotonicMicros: Number(process.hrtime.bigint() / 1000n),
          loopDelayMaxMs: loopDelayMaxMs()
        }
      }
      if (message.resetLoopDelay === true) loopDelay?.reset()
      process.send?.(out)
    }
    if (message.gc && gc !== undefined) {
      // two full collections, then let freed pages go back before reading RSS
      if (message.reduce === true) {
        gc({ type: "major", execution: "sync", flavor: "last-resort" })
      } else {
        gc()
        gc()
      }
      setTimeout(reply, 200)
    } else {
      reply()
    }
  })
  // the IPC channel must not keep a finished server alive, nor outlive the orchestrator
  process.channel?.unref()
  process.on("disconnect", () => process.exit(0))
}
