/**
 * Child processes of the bench: spawned through `bash` so the open-files limit
 * can be raised first (`ulimit -n`), with an IPC channel for request/reply
 * messages; every child is tracked and killed by pid when the bench ends, on
 * success or failure.
 *
 * @module
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { closeSync, openSync, readFileSync } from "node:fs"
import { createServer } from "node:net"

export interface Child {
  readonly name: string
  readonly pid: number
  readonly process: ChildProcess
  /** Sends `message` (which carries `id`) and waits at most `timeoutMs` for the reply with that id. */
  readonly request: <R>(message: { readonly id: number }, timeoutMs: number) => Promise<R>
  /** Resolves with the exit code (or signal) when the child exits. */
  readonly exited: Promise<string>
}

const children = new Set<Child>()
let nextId = 1

export const newRequestId = () => nextId++

export interface SpawnOptions {
  readonly name: string
  readonly args: ReadonlyArray<string>
  readonly env?: Record<string, string>
  /** Open-files limit to ask for (soft and hard; falls back to the hard limit). */
  readonly nofile: number
  /** stdout and stderr go to this file (a server's logs must go somewhere that never blocks it). */
  readonly logFile: string
  readonly cwd: string
  /** CPU list for `taskset -c` (e.g. "0"); unpinned when undefined. */
  readonly cpus?: string | undefined
}

/** Spawns `node <args>` (the Node running this script) with an IPC channel. */
export const spawnNode = (options: SpawnOptions): Child => {
  const log = openSync(options.logFile, "a")
  // `taskset` execs the command, so the pid stays the node process's
  const pin = options.cpus === undefined ? "" : `taskset -c ${options.cpus} `
  const script = `ulimit -Hn ${options.nofile} 2>/dev/null; ulimit -n ${options.nofile} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec ${pin}"$@"`
  const proc = spawn("bash", ["-c", script, "bash", process.execPath, ...options.args], {
    cwd: options.cwd,
    env: { ...process.env, ...options.env },
    stdio: ["ignore", log, log, "ipc"],
    serialization: "json"
  })
  closeSync(log)
  if (proc.pid === undefined) throw new Error(`cannot start ${options.name}`)
  const waiting = new Map<number, (reply: unknown) => void>()
  proc.on("message", (message: unknown) => {
    const id = typeof message === "object" && message !== null ? (message as { id?: unknown }).id : undefined
    if (typeof id !== "number") return
    const resolve = waiting.get(id)
    if (resolve !== undefined) {
      waiting.delete(id)
      resolve(message)
    }
  })
  const exited = new Promise<string>((resolve) => {
    proc.once("exit", (code, signal) => resolve(signal ?? String(code)))
  })
  const child: Child = {
    name: options.name,
    pid: proc.pid,
    process: proc,
    exited,
    request: <R>(message: { readonly id: number }, timeoutMs: number) =>
      new Promise<R>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiting.delete(message.id)
          reject(new Error(`${options.name}: no reply within ${timeoutMs} ms`))
        }, timeoutMs)
        waiting.set(message.id, (reply) => {
          clearTimeout(timer)
          resolve(reply as R)
        })
        exited.then((how) => {
          if (waiting.delete(message.id)) {
            clearTimeout(timer)
            reject(new Error(`${options.name} exited (${how}) before replying`))
          }
        })
        if (!proc.connected || !proc.send(message)) {
          // send() returning false only means backpressure; a closed channel throws or is not connected
          if (!proc.connected) {
            clearTimeout(timer)
            waiting.delete(message.id)
            reject(new Error(`${options.name}: IPC channel closed`))
          }
        }
      })
  }
  children.add(child)
  exited.then(() => children.delete(child))
  return child
}

/** Waits for the first message of a child (its "ready"), at most `timeoutMs`. */
export const firstMessage = (child: Child, timeoutMs: number) =>
  new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${child.name}: not ready within ${timeoutMs} ms`)), timeoutMs)
    child.process.once("message", () => {
      clearTimeout(timer)
      resolve()
    })
    child.exited.then((how) => {
      clearTimeout(timer)
      reject(new Error(`${child.name} exited (${how}) while starting`))
    })
  })

/** Stops one child: `signal`, then SIGKILL after `graceMs`. */
export const stop = async (child: Child, signal: NodeJS.Signals = "SIGTERM", graceMs = 3000) => {
  if (child.process.exitCode !== null || child.process.signalCode !== null) return
  try {
    process.kill(child.pid, signal)
  } catch {
    return
  }
  const timer = setTimeout(() => {
    try {
      process.kill(child.pid, "SIGKILL")
    } catch {
      // already gone
    }
  }, graceMs)
  await child.exited
  clearTimeout(timer)
}

/** Processes that are not node children (`redis-server`), killed by pid with the rest. */
const foreign = new Set<number>()

/** Kills every child still running, by pid (SIGKILL). Synchronous: safe in `exit` handlers. */
export const killAll = () => {
  for (const pid of foreign) {
    try {
      process.kill(pid, "SIGKILL")
    } catch {
      // already gone
    }
  }
  foreign.clear()
  for (const child of children) {
    try {
      process.kill(child.pid, "SIGKILL")
    } catch {
      // already gone
    }
  }
  children.clear()
}

/** Every child dies with the process, however it ends: `killAll` on exit and on SIGINT/SIGTERM/SIGHUP (then exit 130). */
export const killChildrenOnExit = () => {
  process.on("exit", killAll)
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(signal, () => {
      killAll()
      process.exit(130)
    })
  }
}

/** A free TCP port on 127.0.0.1 (asked from the kernel, then released). */
export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

/** Polls until something accepts TCP connections on `port` and answers HTTP, at most `timeoutMs`. */
export const waitForHttp = async (port: number, path: string, timeoutMs: number, child: Child) => {
  const deadline = performance.now() + timeoutMs
  let exitedHow: string | undefined
  child.exited.then((how) => {
    exitedHow = how
  })
  while (performance.now() < deadline) {
    if (exitedHow !== undefined) throw new Error(`${child.name} exited (${exitedHow}) while starting`)
    try {
      const response = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(1000) })
      await response.arrayBuffer()
      return
    } catch {
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  throw new Error(`${child.name}: no HTTP answer on port ${port} within ${timeoutMs} ms`)
}

/** Resident set size of a process, bytes, read from outside it (`/proc/<pid>/status`). */
export const rssOf = (pid: number): number => {
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
  return match === null ? Number.NaN : Number(match[1]) * 1024
}

/** Soft and hard open-files limits of a process (`/proc/<pid>/limits`). */
export const openFilesLimit = (pid: number): { readonly soft: number; readonly hard: number } => {
  const line = readFileSync(`/proc/${pid}/limits`, "utf8").split("\n").find((l) => l.startsWith("Max open files"))
  const [soft, hard] = (line ?? "").slice("Max open files".length).trim().split(/\s+/)
  return { soft: Number(soft), hard: Number(hard) }
}

/**
 * Write-like syscalls (`write`, `writev`, …) a process made so far, all threads
 * (`syscw` of `/proc/<pid>/io`); NaN when unreadable.
 */
export const writeSyscallsOf = (pid: number): number => {
  try {
    const match = /^syscw:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/io`, "utf8"))
    return match === null ? Number.NaN : Number(match[1])
  } catch {
    return Number.NaN
  }
}

/**
 * CPU time (user + system) of a process's main thread so far, ms, from
 * `/proc/<pid>/task/<pid>/stat` (clock ticks, usually 10 ms); NaN when unreadable.
 * The rest of the process's CPU is other threads: V8's GC helpers, libuv's pool.
 */
export const mainThreadCpuMsOf = (pid: number): number => {
  try {
    const stat = readFileSync(`/proc/${pid}/task/${pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    // fields[11] and [12] are utime and stime (fields 14 and 15 of stat(5))
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS
  } catch {
    return Number.NaN
  }
}

/**
 * CPU time (user + system) of a whole process so far, all threads, ms, from
 * `/proc/<pid>/stat` (clock ticks, usually 10 ms); NaN when unreadable. For
 * processes without the probe (`redis-server`).
 */
export const processCpuMsOf = (pid: number): number => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS
  } catch {
    return Number.NaN
  }
}

/** A `redis-server` started by the bench: tracked, killed by pid by `killAll` or `stop`. */
export interface RedisProcess {
  readonly pid: number
  readonly port: number
  /** `redis://127.0.0.1:<port>` */
  readonly url: string
  /** SIGTERM, then SIGKILL after `graceMs`; waits for the exit. */
  readonly stop: (graceMs?: number) => Promise<void>
}

/**
 * Starts `redis-server` (`binary`) on a free loopback port with no persistence
 * (`--save "" --appendonly no`), pinned with `taskset -c cpus` when given (taskset
 * execs it, so the pid is redis-server's), and waits for "Ready to accept
 * connections" (at most `timeoutMs`). Its output goes to `logFile`.
 */
export const spawnRedis = async (
  options: { readonly binary: string; readonly cpus?: string | undefined; readonly logFile: string; readonly timeoutMs: number }
): Promise<RedisProcess> => {
  const port = await freePort()
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--logfile", options.logFile]
  const proc = options.cpus === undefined
    ? spawn(options.binary, args, { stdio: "ignore" })
    : spawn("taskset", ["-c", options.cpus, options.binary, ...args], { stdio: "ignore" })
  if (proc.pid === undefined) throw new Error("cannot start redis-server")
  const pid = proc.pid
  foreign.add(pid)
  const exited = new Promise<string>((resolve) => proc.once("exit", (code, signal) => resolve(signal ?? String(code))))
  exited.then(() => foreign.delete(pid))
  const deadline = performance.now() + options.timeoutMs
  let exitedHow: string | undefined
  exited.then((how) => {
    exitedHow = how
  })
  for (;;) {
    if (exitedHow !== undefined) throw new Error(`redis-server exited (${exitedHow}) while starting; log: ${options.logFile}`)
    let text = ""
    try {
      text = readFileSync(options.logFile, "utf8")
    } catch {
      // not written yet
    }
    if (text.includes("Ready to accept connections")) break
    if (performance.now() > deadline) throw new Error(`redis-server: not ready within ${options.timeoutMs} ms; log: ${options.logFile}`)
    await new Promise((r) => setTimeout(r, 50))
  }
  return {
    pid,
    port,
    url: `redis://127.0.0.1:${port}`,
    stop: async (graceMs = 2000) => {
      if (exitedHow !== undefined) return
      try {
        process.kill(pid, "SIGTERM")
      } catch {
        return
      }
      const timer = setTimeout(() => {
        try {
          process.kill(pid, "SIGKILL")
        } catch {
          // already gone
        }
      }, graceMs)
      await exited
      clearTimeout(timer)
    }
  }
}

/** `getconf CLK_TCK`; 100 on Linux unless configured otherwise. */
const CLOCK_TICKS = (() => {
  try {
    const out = spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()
    return Number(out) > 0 ? Number(out) : 100
  } catch {
    return 100
  }
})()

/** Whether a command runs (`<cmd> --version` exits 0). */
export const hasCommand = (cmd: string): boolean => {
  try {
    return spawnSync(cmd, ["--version"], { stdio: "ignore" }).status === 0
  } catch {
    return false
  }
}

/**
 * How the bench pins its processes: with two or more CPUs and `taskset`
 * available, the servers under test on CPU 0 and the load generators (and the
 * orchestrator) on the others; otherwise nothing is pinned.
 */
export interface Pinning {
  readonly server: string | undefined
  readonly client: string | undefined
  readonly description: string
}

export const choosePinning = (nproc: number, enabled: boolean): Pinning => {
  if (!enabled) return { server: undefined, client: undefined, description: "not pinned (--no-pin)" }
  if (nproc < 2) return { server: undefined, client: undefined, description: `not pinned (nproc = ${nproc})` }
  if (!hasCommand("taskset")) return { server: undefined, client: undefined, description: "not pinned (no taskset)" }
  const client = nproc === 2 ? "1" : `1-${nproc - 1}`
  return {
    server: "0",
    client,
    description: `servers pinned to CPU 0, load generators and orchestrator to CPU ${client} (taskset)`
  }
}
