/**
 * Memory under floods from clients that do not read (issue 7, fault 2).
 *
 *     npm exec -- node bench/flood.ts [--old <dir>] [--window <seconds>] [--cases 1,2,3,4]
 *
 * For each case a fresh server is started as a child process (`node src/main.ts`
 * of this checkout, and of `--old <dir>` when given, e.g. a worktree of an older
 * commit), its RSS (`VmRSS` of /proc/<pid>/status) is sampled every 50 ms, and
 * its stdout logfmt lines `connection closed ... code=… reason=…` are counted.
 * Cases (the load runs in this process, with the `ws` client):
 * 1. one client that never reads sends the 1-byte frame `{` 600,000 times;
 * 2. the same with 600,000 `{"type":"ping"}`;
 * 3. 40 non-reading sockets of one user while that user (from a 41st, reading
 *    socket) runs `ticker` with `steps=100000 interval_ms=0`;
 * 4. case 1 with `AGENTWIRE_HEARTBEAT_MS=500` (cases 1–3 run with 0 = off).
 *
 * Each case lasts a fixed window (default 20 s) from the start of the load:
 * frames are sent as fast as the server takes them (at most 1 MiB waits in this
 * process), until all are sent or the window ends. Reported per case: RSS
 * before the load, peak, `held` at the end of the window (the clients still
 * connected, still not reading), `after` 3 s after the clients closed, and the
 * RSS every 5 s of the window. Case 3 runs two rounds (half a window each) on
 * the same server, so that memory not reused would show as a higher second peak.
 * RSS does not count bytes waiting in the kernel's socket buffers.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { cpus, totalmem } from "node:os"
import { dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { SignJWT } from "jose"
import WebSocket from "ws"

const SECRET = "agentwire-flood-bench-secret-0123456789abcdef"
const USER = "flood-user"
const FLOOD_FRAMES = 600_000
const SOCKETS_CASE_3 = 40
/** Bytes allowed to wait in this process before the sender waits for the server to take them. */
const CLIENT_BUFFER_BYTES = 1024 * 1024
const SAMPLE_MS = 50
const AFTER_CLOSE_MS = 3000

const args = process.argv.slice(2)
const option = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? args[i + 1] : undefined
}
const here = resolve(dirname(fileURLToPath(import.meta.url)), "..")
const oldDir = option("old")
const windowMs = Number(option("window") ?? "20") * 1000
const selected = (option("cases") ?? "1,2,3,4").split(",").map(Number)
/** Rounds of case 3 on one server (each gets an equal share of the window). */
const rounds = Number(option("rounds") ?? "2")

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
const mib = (kib: number) => Math.round(kib / 1024)

const signToken = (user_id: string): Promise<string> =>
  new SignJWT({})
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(user_id)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + 3600)
    .sign(new TextEncoder().encode(SECRET))

/** VmRSS of `pid` in KiB, or undefined once the process is gone. */
const rssKiB = (pid: number): number | undefined => {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
    return m ? Number(m[1]) : undefined
  } catch {
    return undefined
  }
}

interface Server {
  readonly proc: ChildProcess
  readonly pid: number
  readonly url: string
  /** `connection closed` log lines: when this process read them (ms since epoch) and `reason[/limit] code=…`. */
  readonly closed: Array<{ readonly at: number; readonly key: string }>
  readonly exited: Promise<string>
  readonly stderr: () => string
}

/** Starts `node src/main.ts` in `dir`; resolves once it logs its URL. */
const startServer = (dir: string, heartbeatMs: number): Promise<Server> =>
  new Promise((resolvePromise, reject) => {
    const proc = spawn(process.execPath, ["src/main.ts"], {
      cwd: dir,
      env: {
        ...process.env,
        AGENTWIRE_PORT: "0",
        AGENTWIRE_HOST: "127.0.0.1",
        AGENTWIRE_JWT_SECRET: SECRET,
        AGENTWIRE_HEARTBEAT_MS: String(heartbeatMs),
        NODE_ENV: "development"
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    if (proc.pid === undefined) return reject(new Error("cannot spawn the server"))
    const pid = proc.pid
    const closed: Array<{ readonly at: number; readonly key: string }> = []
    let err = ""
    let pending = ""
    let started = false
    const exited = new Promise<string>((r) => proc.once("exit", (code, signal) => r(signal ?? String(code))))
    exited.then((how) => {
      if (!started) reject(new Error(`server exited (${how}) before listening: ${err}`))
    })
    proc.stderr!.setEncoding("utf8").on("data", (d: string) => {
      if (err.length < 20_000) err += d
    })
    proc.stdout!.setEncoding("utf8").on("data", (d: string) => {
      pending += d
      let nl: number
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl)
        pending = pending.slice(nl + 1)
        if (!started) {
          const m = /listening on (http:\/\/[^\s"]+)/.exec(line)
          if (m) {
            started = true
            resolvePromise({ proc, pid, url: m[1]!, closed, exited, stderr: () => err })
          }
        }
        if (line.includes("connection closed")) {
          const code = /\bcode=(\S+)/.exec(line)?.[1] ?? "?"
          const reason = /\breason=(\S+)/.exec(line)?.[1]
          const limit = /\blimit=(\S+)/.exec(line)?.[1]
          const key = `${reason ?? "(none)"}${limit ? `/${limit}` : ""} code=${code}`
          closed.push({ at: Date.now(), key })
        }
      }
    })
  })

const stopServer = async (server: Server) => {
  if (server.proc.exitCode === null && server.proc.signalCode === null) {
    server.proc.kill("SIGTERM")
    const timer = setTimeout(() => server.proc.kill("SIGKILL"), 5000)
    await server.exited
    clearTimeout(timer)
  }
}

/** Opens a socket of `user`; `reading` false pauses it as soon as it is open. */
const connect = (server: Server, token: string, reading: boolean): Promise<WebSocket> =>
  new Promise((r, reject) => {
    const ws = new WebSocket(`${server.url.replace(/^http/, "ws")}/ws?token=${encodeURIComponent(token)}`)
    ws.once("open", () => {
      if (!reading) ws.pause()
      r(ws)
    })
    ws.once("error", reject)
  })

/** Server-side drops of the load's sockets, from the log lines after the first `from`: how many, and when the last one was logged (ms after `t0`). */
const dropsSince = (server: Server, from: number, t0: number) => {
  const lines = server.closed.slice(from)
  const last = lines.length === 0 ? 0 : Math.max(...lines.map((c) => c.at)) - t0
  return { count: lines.length, lastS: (last / 1000).toFixed(1) }
}

/** Sends `frame` `count` times, keeping at most CLIENT_BUFFER_BYTES waiting here; stops at `deadline`. */
const flood = async (ws: WebSocket, frame: string, count: number, deadline: number) => {
  let sent = 0
  while (sent < count && ws.readyState === WebSocket.OPEN && Date.now() < deadline) {
    if (ws.bufferedAmount > CLIENT_BUFFER_BYTES) {
      await sleep(2)
      continue
    }
    const batch = Math.min(count - sent, 2000)
    for (let i = 0; i < batch; i++) ws.send(frame)
    sent += batch
    await new Promise<void>((r) => setImmediate(r))
  }
  return sent
}

interface CaseResult {
  readonly name: string
  readonly server: string
  readonly beforeMiB: number
  readonly peakMiB: number
  readonly heldMiB: number
  readonly afterMiB: number
  /** RSS (MiB) every 5 s of the window. */
  readonly timeline: ReadonlyArray<number>
  readonly didWhat: string
  readonly reasons: string
}

interface CaseSpec {
  readonly id: number
  readonly name: string
  readonly heartbeatMs: number
  /** Runs the load until `deadline`; returns what happened (asked at the end of the window) and a function that closes its sockets. */
  readonly load: (server: Server, t0: number, deadline: number) => Promise<{ readonly didWhat: () => string; readonly close: () => void }>
}

const floodCase = (id: number, name: string, frame: string, heartbeatMs: number): CaseSpec => ({
  id,
  name,
  heartbeatMs,
  load: async (server, t0, deadline) => {
    const ws = await connect(server, await signToken(USER), false)
    ws.on("error", () => {})
    const sent = await flood(ws, frame, FLOOD_FRAMES, deadline)
    const sentAtS = ((Date.now() - t0) / 1000).toFixed(1)
    return {
      didWhat: () => {
        const drops = dropsSince(server, 0, t0)
        const taken = sent - Math.ceil(ws.bufferedAmount / (frame.length + 6))
        return `${drops.count > 0 ? `dropped the flooder at ${drops.lastS} s` : "kept the flooder (not reading it while backed up)"}; ` +
          (sent === FLOOD_FRAMES ? `all ${sent} frames accepted by TCP by ${sentAtS} s` : `TCP accepted ~${Math.max(0, taken)} frames`)
      },
      close: () => ws.terminate()
    }
  }
})

/** One round of case 3: 40 paused sockets and a reading one of the same user, which starts the ticker. */
const tickerRound = async (server: Server, t0: number, deadline: number) => {
  const from = server.closed.length
  const token = await signToken(USER)
  const sockets = await Promise.all(Array.from({ length: SOCKETS_CASE_3 }, () => connect(server, token, false)))
  for (const ws of sockets) ws.on("error", () => {})
  const driver = await connect(server, token, true)
  let events = 0
  let doneAt: number | undefined
  driver.on("message", (data) => {
    events++
    const text = String(data)
    if (text.includes("\"agent_completed\"") || text.includes("\"agent_error\"")) doneAt ??= Date.now() - t0
  })
  driver.send(JSON.stringify({ type: "start_agent", agent: "ticker", user_request: "steps=100000 interval_ms=0" }))
  while (Date.now() < deadline && !(doneAt !== undefined && dropsSince(server, from, t0).count >= SOCKETS_CASE_3)) await sleep(20)
  const drops = dropsSince(server, from, t0)
  const summary = `${drops.count}/${SOCKETS_CASE_3} paused sockets dropped${drops.count > 0 ? ` (last at ${drops.lastS} s)` : ""}, ` +
    `reading socket got ${events} frames${doneAt !== undefined ? `, run done at ${(doneAt / 1000).toFixed(1)} s` : ""}`
  return {
    summary,
    /** Closes the round's sockets; resolves once the server logged all of them closed (or after 3 s). */
    close: async () => {
      for (const ws of sockets) ws.terminate()
      driver.close()
      const until = Date.now() + 3000
      while (server.closed.length < from + SOCKETS_CASE_3 + 1 && Date.now() < until) await sleep(20)
    }
  }
}

const cases: ReadonlyArray<CaseSpec> = [
  floodCase(1, "600k `{`, no reading", "{", 0),
  floodCase(2, "600k ping, no reading", "{\"type\":\"ping\"}", 0),
  {
    id: 3,
    name: `40 non-reading sockets, ticker 100k steps (${rounds} rounds, one server)`,
    heartbeatMs: 0,
    load: async (server, t0, deadline) => {
      // several rounds on the same server: peaks that keep rising would mean memory not reused (a leak)
      const slice = (deadline - t0) / rounds
      const done: Array<string> = []
      for (let i = 0; i < rounds - 1; i++) {
        const start = Date.now()
        const round = await tickerRound(server, start, t0 + slice * (i + 1))
        done.push(`round ${i + 1} (from ${((start - t0) / 1000).toFixed(1)} s): ${round.summary}, RSS peak so far ${mib(peakSoFar)} MiB`)
        await round.close()
        await sleep(Math.max(0, t0 + slice * (i + 1) - Date.now()))
      }
      const start = Date.now()
      const last = await tickerRound(server, start, deadline)
      return {
        didWhat: () => [...done, `round ${rounds} (from ${((start - t0) / 1000).toFixed(1)} s): ${last.summary}`].join("; "),
        close: () => void last.close()
      }
    }
  },
  floodCase(4, "case 1 with heartbeat 500 ms", "{", 500)
]

/** Peak RSS (KiB) of the running case, updated by the sampler. */
let peakSoFar = 0

const runCase = async (spec: CaseSpec, label: string, dir: string): Promise<CaseResult> => {
  const server = await startServer(dir, spec.heartbeatMs)
  try {
    await sleep(500)
    const beforeKiB = rssKiB(server.pid) ?? 0
    peakSoFar = beforeKiB
    const timeline: Array<number> = []
    const t0 = Date.now()
    const sampler = setInterval(() => {
      const r = rssKiB(server.pid)
      if (r === undefined) return
      if (r > peakSoFar) peakSoFar = r
      const elapsed = Date.now() - t0
      if (elapsed >= (timeline.length + 1) * 5000 && elapsed <= windowMs + SAMPLE_MS) timeline.push(mib(r))
    }, SAMPLE_MS)
    const { close, didWhat } = await spec.load(server, t0, t0 + windowMs)
    const waitLeft = t0 + windowMs - Date.now()
    if (waitLeft > 0) await sleep(waitLeft)
    const heldKiB = rssKiB(server.pid) ?? 0
    const what = didWhat()
    close()
    await sleep(AFTER_CLOSE_MS)
    clearInterval(sampler)
    const afterKiB = rssKiB(server.pid) ?? 0
    const peakKiB = Math.max(peakSoFar, afterKiB)
    const exitedEarly = server.proc.exitCode !== null || server.proc.signalCode !== null
    await sleep(200) // let the last log lines arrive
    const counts = new Map<string, number>()
    for (const c of server.closed) counts.set(c.key, (counts.get(c.key) ?? 0) + 1)
    const reasons = [...counts.entries()].map(([k, n]) => `${n}× ${k}`).join(", ") || "none"
    return {
      name: `${spec.id}. ${spec.name}`,
      server: label,
      beforeMiB: mib(beforeKiB),
      peakMiB: mib(peakKiB),
      heldMiB: mib(heldKiB),
      afterMiB: mib(afterKiB),
      timeline,
      didWhat: exitedEarly ? `${what}; SERVER EXITED` : what,
      reasons
    }
  } catch (error) {
    const exit = server.proc.exitCode ?? server.proc.signalCode
    throw new Error(`${label} case ${spec.id}: ${String(error)}; server exit ${exit ?? "none"}; stderr: ${server.stderr().slice(-3000)}`)
  } finally {
    await stopServer(server)
  }
}

const main = async () => {
  const servers: Array<readonly [string, string]> = [["new", here]]
  if (oldDir !== undefined) servers.unshift(["old", resolve(oldDir)])
  const results: Array<CaseResult> = []
  const started = Date.now()
  for (const spec of cases.filter((c) => selected.includes(c.id))) {
    for (const [label, dir] of servers) {
      const r = await runCase(spec, label, dir)
      results.push(r)
      console.log(
        `[${((Date.now() - started) / 1000).toFixed(0)} s] ${r.server} ${r.name}: before ${r.beforeMiB} MiB, peak ${r.peakMiB}, ` +
          `held ${r.heldMiB}, after ${r.afterMiB}; every 5 s: ${r.timeline.join(" ")}; ${r.didWhat}; closed: ${r.reasons}`
      )
    }
  }
  console.log()
  console.log(`machine: ${cpus().length} × ${cpus()[0]?.model ?? "?"}, ${mib(totalmem() / 1024)} MiB RAM, node ${process.version}; window ${windowMs / 1000} s`)
  console.log()
  console.log("| case | server | RSS before | peak | held (end of window) | after close + 3 s | RSS every 5 s | what the server did | `connection closed` reasons |")
  console.log("|---|---|---:|---:|---:|---:|---|---|---|")
  for (const r of results) {
    console.log(`| ${r.name} | ${r.server} | ${r.beforeMiB} | ${r.peakMiB} | ${r.heldMiB} | ${r.afterMiB} | ${r.timeline.join(" ")} | ${r.didWhat} | ${r.reasons} |`)
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)
