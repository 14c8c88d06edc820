/**
 * Two real agentwire processes (`src/main.ts`, as `npm start` runs it) on one
 * real `redis-server`, each on its own free port with its own
 * AGENTWIRE_DATA_DIR (issue 12): fan-out, resume across instances, stop
 * anywhere, the per-user limit across instances, an instance killed mid-run
 * (INSTANCE_LOST within lease + one recovery scan + 1 s, slots free again), and Redis killed
 * mid-run and restarted empty. Every process is killed by pid. Skipped with
 * the install command when redis-server is missing.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, type Scope } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { SignJWT } from "jose"
import { createClient } from "redis"
import type { AgentEvent, ServerMessage } from "../src/protocol/Protocol.ts"
import { type Client, connect } from "./fixtures/client.ts"
import { INSTALL_HINT, type RedisServer, redisServerPath, startRedis } from "./fixtures/redisServer.ts"

const installed = redisServerPath() !== undefined
if (!installed) console.warn(`cluster tests skipped: redis-server is not installed (${INSTALL_HINT})`)

const MAIN = fileURLToPath(new URL("../src/main.ts", import.meta.url))
const SECRET = "cluster-test-secret-0123456789abcdef"
/** Short lease so that instance loss is seen quickly. */
const LEASE_MS = 1500
/**
 * When a killed instance's runs are closed at the latest (docs of `InstanceLeaseRedis`): its lease lapses at
 * most `LEASE_MS` after its last renewal, and survivors look for lapsed leases every `min(LEASE_MS / 4, 500)` ms.
 * The test allows 1 s on top for closing the runs and delivering the events (before, the bound was the lease
 * + 1 s, which left 0.6 s of that to a loaded machine).
 */
const LOST_WITHIN_MS = LEASE_MS + Math.min(LEASE_MS / 4, 500)

interface Instance {
  readonly name: string
  readonly port: number
  readonly child: ChildProcess
  readonly output: () => string
  readonly http: (path: string, init?: RequestInit & { readonly user?: string }) => Promise<Response>
  readonly socket: (user: string) => Effect.Effect<Client, unknown, Scope.Scope>
  readonly alive: () => boolean
}

const tokens = new Map<string, string>()
const token = async (user: string) => {
  const known = tokens.get(user)
  if (known !== undefined) return known
  const t = await new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject(user).setIssuedAt().setExpirationTime("30m")
    .sign(new TextEncoder().encode(SECRET))
  tokens.set(user, t)
  return t
}

const dirs: Array<string> = []

/**
 * Starts `src/main.ts` on a port of its own choosing (AGENTWIRE_PORT=0: a port picked here and bound later by the
 * child could be taken meanwhile by another process) against `redisUrl`; resolves with the port it listens on.
 */
const startInstance = async (name: string, redisUrl: string, env: Record<string, string> = {}): Promise<Instance> => {
  const dataDir = mkdtempSync(join(tmpdir(), `agentwire-cluster-${name}-`))
  dirs.push(dataDir)
  const child = spawn(process.execPath, [MAIN], {
    env: {
      PATH: process.env.PATH ?? "",
      AGENTWIRE_HOST: "127.0.0.1",
      AGENTWIRE_PORT: "0",
      AGENTWIRE_DATA_DIR: dataDir,
      AGENTWIRE_REDIS_URL: redisUrl,
      AGENTWIRE_JWT_SECRET: SECRET,
      AGENTWIRE_INSTANCE_LEASE_MS: String(LEASE_MS),
      AGENTWIRE_RUN_STARTS_PER_SECOND: "0",
      AGENTWIRE_MAX_RUNS_PER_USER: "2",
      ...env
    },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let output = ""
  const port = await new Promise<number>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString()
      const listening = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(output)
      if (listening !== null) resolve(Number(listening[1]))
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.once("exit", (code) => reject(new Error(`${name} exited (${code}) before it listened:\n${output.slice(-3000)}`)))
  })
  return {
    name,
    port,
    child,
    output: () => output,
    alive: () => child.exitCode === null && child.signalCode === null,
    http: async (path, init) => {
      const headers = new Headers(init?.headers)
      if (init?.user !== undefined) headers.set("authorization", `Bearer ${await token(init.user)}`)
      if (init?.body !== undefined) headers.set("content-type", "application/json")
      return fetch(`http://127.0.0.1:${port}${path}`, { ...init, headers })
    },
    socket: (user) =>
      Effect.gen(function*() {
        const t = yield* Effect.promise(() => token(user))
        const client = yield* connect(`ws://127.0.0.1:${port}/ws?token=${t}`)
        yield* client.next("connection_established")
        return client
      })
  }
}

/** Kills a process by pid (SIGKILL) and waits for its exit. */
const killNow = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGKILL")
  })

/** A cluster for one test: Redis and two instances, killed by pid when the scope closes. */
const cluster = (env: Record<string, string> = {}) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const redis = await startRedis()
      const a = await startInstance("a", redis.url, env)
      const b = await startInstance("b", redis.url, env)
      return { redis, a, b }
    }),
    ({ a, b, redis }) => Effect.promise(async () => {
      await Promise.all([killNow(a.child), killNow(b.child)])
      await redis.stop()
    })
  )

const startRun = (instance: Instance, user: string, body: Record<string, unknown>) =>
  Effect.promise(async () => {
    const response = await instance.http("/api/runs", { method: "POST", user, body: JSON.stringify(body) })
    return { status: response.status, body: await response.json() as { run_id: string; error?: { code: string } } }
  })

const agentEvents = (client: Client, run_id: string): ReadonlyArray<AgentEvent> =>
  client.received.filter((m): m is ServerMessage & AgentEvent => "seq" in m && m.run_id === run_id)

/** The run's events on `client` are 1..n, each once, in order, ending with the root agent_completed. */
const expectWholeRun = (events: ReadonlyArray<AgentEvent>) => {
  expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1))
  expect(events.at(-1)).toMatchObject({ type: "agent_completed", depth: 0 })
}

/** Polls `check` every 50 ms until it holds (for conditions only visible from outside: /ready, a process's view of Redis). */
const eventually = <A>(check: () => Promise<A>, holds: (a: A) => boolean, timeoutMs = 15_000) =>
  Effect.promise(async () => {
    const deadline = Date.now() + timeoutMs
    let last: A | undefined
    for (;;) {
      try {
        last = await check()
        if (holds(last)) return last
      } catch {
        // not yet
      }
      if (Date.now() > deadline) throw new Error(`condition not reached in ${timeoutMs} ms (last: ${JSON.stringify(last)})`)
      await new Promise((r) => setTimeout(r, 50))
    }
  })

describe.skipIf(!installed)("two instances on one Redis", () => {
  // one cluster for the tests that leave it intact (each uses its own user)
  let shared: { redis: RedisServer; a: Instance; b: Instance } | undefined
  beforeAll(async () => {
    const redis = await startRedis()
    shared = { redis, a: await startInstance("a", redis.url), b: await startInstance("b", redis.url) }
  }, 60_000)
  afterAll(async () => {
    if (shared !== undefined) {
      await Promise.all([killNow(shared.a.child), killNow(shared.b.child)])
      await shared.redis.stop()
    }
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
  })

  it.live("a run started through A's POST /api/runs reaches the user's sockets on A and on B, each event once, in order", () =>
    Effect.gen(function*() {
      const { a, b } = shared!
      const onA = yield* a.socket("fan")
      const onB = yield* b.socket("fan")
      const started = yield* startRun(a, "fan", { agent: "supervisor", user_request: "what is 6*7?" })
      expect(started.status).toBe(202)
      const run_id = started.body.run_id
      yield* onA.runEvents(run_id)
      yield* onB.runEvents(run_id)
      const seenA = agentEvents(onA, run_id)
      const seenB = agentEvents(onB, run_id)
      expectWholeRun(seenA)
      expect(seenA.length).toBeGreaterThan(5)
      expect(seenB).toEqual(seenA)
      expect(seenA.at(-1)).toMatchObject({ status: "completed" })
    }).pipe(Effect.scoped), 30_000)

  it.live("each instance holds four Redis connections (RedisInstance's command and subscriber, the run log's command and subscriber)", () =>
    Effect.gen(function*() {
      const { redis } = shared!
      const list = yield* Effect.promise(async () => {
        const client = createClient({ url: redis.url })
        await client.connect()
        try {
          return String(await client.sendCommand(["CLIENT", "LIST"]))
        } finally {
          client.destroy()
        }
      })
      // every connection but the one asking
      const others = list.trim().split("\n").filter((line) => !/\bcmd=client\|list\b/.test(line))
      expect(others).toHaveLength(2 * 4)
    }).pipe(Effect.scoped), 30_000)

  it.live("a user's two sockets on B, one closes: the other still gets every event of a run on A (the user's channel stays subscribed)", () =>
    Effect.gen(function*() {
      const { a, b } = shared!
      const bridgeConnections = () => b.http("/ready").then((r) => r.json() as Promise<{ components: { bridge: { connections: number } } }>).then((r) => r.components.bridge.connections)
      const base = yield* Effect.promise(bridgeConnections)
      const kept = yield* b.socket("tabs")
      yield* Effect.scoped(Effect.gen(function*() {
        yield* b.socket("tabs")
        yield* eventually(bridgeConnections, (n) => n === base + 2)
      }))
      // B has seen the close (its registration ended)
      yield* eventually(bridgeConnections, (n) => n === base + 1)
      const started = yield* startRun(a, "tabs", { agent: "echo", user_request: "after one tab closed" })
      expect(started.status).toBe(202)
      yield* kept.runEvents(started.body.run_id)
      expectWholeRun(agentEvents(kept, started.body.run_id))
    }).pipe(Effect.scoped), 30_000)

  it.live("resume on B of a run executing on A, started while nobody listened on B: every event once, then live to the end", () =>
    Effect.gen(function*() {
      const { a, b } = shared!
      // the user listens on A only; B has no connection of the user
      const onA = yield* a.socket("res")
      // 3 s: still running when B's resume lands (with 30 × 40 ms the run could end first on a loaded machine)
      const started = yield* startRun(a, "res", { agent: "ticker", user_request: "steps=100 interval_ms=30" })
      const run_id = started.body.run_id
      yield* onA.next("agent_thinking", (m) => m.run_id === run_id && m.step_number === 5)
      const onB = yield* b.socket("res")
      onB.send({ type: "resume_run", run_id, after_seq: 0, request_id: "r" })
      const resumed = yield* onB.next("run_resumed", (m) => m.request_id === "r")
      expect(resumed.status).toBe("running")
      expect(resumed.last_seq).toBeGreaterThanOrEqual(6)
      yield* onB.runEvents(run_id)
      // B's socket is the user's, so it gets the run's live events from the moment it is registered: one that came
      // before the resume landed is followed by the replay of the older ones (protocol.md §5.2, the one case not in
      // seq order). Each event once; in seq order from the resume on, except those it already had
      const seenB = agentEvents(onB, run_id)
      const bySeq = [...seenB].sort((x, y) => x.seq - y.seq)
      expectWholeRun(bySeq)
      expect(seenB).toHaveLength(102)
      // what came before the replay's first event came live; from there on: strictly in seq order, without those
      const early = new Set(seenB.slice(0, seenB.findIndex((e) => e.seq === 1)).map((e) => e.seq))
      expect(seenB.slice(early.size).map((e) => e.seq)).toEqual(bySeq.map((e) => e.seq).filter((seq) => !early.has(seq)))
      yield* onA.runEvents(run_id)
      expect(agentEvents(onA, run_id)).toEqual(bySeq)
    }).pipe(Effect.scoped), 30_000)

  it.live("stop_agent sent to B stops the run executing on A; the stopper gets run_stopped after the terminal events", () =>
    Effect.gen(function*() {
      const { a, b } = shared!
      const onA = yield* a.socket("stop")
      const onB = yield* b.socket("stop")
      const started = yield* startRun(a, "stop", { agent: "ticker", user_request: "steps=1000 interval_ms=20" })
      const run_id = started.body.run_id
      yield* onB.next("agent_thinking", (m) => m.run_id === run_id)
      onB.send({ type: "stop_agent", run_id, request_id: "s" })
      const stopped = yield* onB.next("run_stopped", (m) => m.request_id === "s")
      expect(stopped.run_ids).toEqual([run_id])
      const seenB = agentEvents(onB, run_id)
      expectWholeRun(seenB)
      expect(seenB.slice(-2).map((e) => e.type)).toEqual(["agent_stopped", "agent_completed"])
      expect(seenB.at(-1)).toMatchObject({ status: "cancelled" })
      // the terminal events came before the answer
      expect(onB.received.findIndex((m) => m.type === "run_stopped")).toBeGreaterThan(onB.received.indexOf(seenB.at(-1)!))
      yield* onA.runEvents(run_id)
      expect(agentEvents(onA, run_id)).toEqual(seenB)
    }).pipe(Effect.scoped), 30_000)

  it.live("the per-user limit (2) holds across A and B", () =>
    Effect.gen(function*() {
      const { a, b } = shared!
      const onB = yield* b.socket("lim")
      const first = yield* startRun(a, "lim", { agent: "ticker", user_request: "steps=1000 interval_ms=20" })
      const second = yield* startRun(b, "lim", { agent: "ticker", user_request: "steps=1000 interval_ms=20" })
      expect([first.status, second.status]).toEqual([202, 202])
      const third = yield* startRun(a, "lim", { agent: "echo", user_request: "x" })
      const fourth = yield* startRun(b, "lim", { agent: "echo", user_request: "x" })
      expect([third.status, third.body.error?.code]).toEqual([429, "RUN_LIMIT_EXCEEDED"])
      expect([fourth.status, fourth.body.error?.code]).toEqual([429, "RUN_LIMIT_EXCEEDED"])
      // over WebSocket on B as well
      onB.send({ type: "start_agent", agent: "echo", user_request: "x", request_id: "w" })
      expect(yield* onB.next("error", (m) => m.request_id === "w")).toMatchObject({ code: "RUN_LIMIT_EXCEEDED" })
      // stopping everything from B frees both slots, on both instances
      onB.send({ type: "stop_agent", request_id: "all" })
      const stopped = yield* onB.next("run_stopped", (m) => m.request_id === "all")
      expect([...stopped.run_ids].sort()).toEqual([first.body.run_id, second.body.run_id].sort())
      const again = yield* startRun(a, "lim", { agent: "echo", user_request: "x" })
      expect(again.status).toBe(202)
    }).pipe(Effect.scoped), 30_000)
})

describe.skipIf(!installed)("losing a process", () => {
  afterAll(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
  })

  it.live(`A killed (SIGKILL) mid-run: observers on B get INSTANCE_LOST within the lease and one recovery scan (${LOST_WITHIN_MS} ms) + 1 s; the log has it; the slots are free`, () =>
    Effect.gen(function*() {
      const { a, b } = yield* cluster()
      const onB = yield* b.socket("lost")
      const runs = [
        yield* startRun(a, "lost", { agent: "ticker", user_request: "steps=1000 interval_ms=20" }),
        yield* startRun(a, "lost", { agent: "ticker", user_request: "steps=1000 interval_ms=30" })
      ].map((r) => r.body.run_id)
      for (const run_id of runs) yield* onB.next("agent_thinking", (m) => m.run_id === run_id)
      // the user's two slots are taken
      expect((yield* startRun(b, "lost", { agent: "echo", user_request: "x" })).status).toBe(429)
      const killedAt = Date.now()
      yield* Effect.promise(() => killNow(a.child))
      for (const run_id of runs) {
        yield* onB.runEvents(run_id).pipe(
          Effect.timeout(LEASE_MS + 10_000),
          Effect.tapError(() => Effect.sync(() => console.error(`B's output:\n${b.output().slice(-6000)}`)))
        )
        const elapsed = Date.now() - killedAt
        console.log(`INSTANCE_LOST of ${run_id} on B ${elapsed} ms after A was killed (lease ${LEASE_MS} ms)`)
        expect(elapsed).toBeLessThan(LOST_WITHIN_MS + 1000)
        const seen = agentEvents(onB, run_id)
        expect(seen.map((e) => e.seq)).toEqual(seen.map((_, i) => seen[0]!.seq + i))
        const [error, completed] = seen.slice(-2)
        expect(error).toMatchObject({ type: "agent_error", depth: 0, error: { code: "INSTANCE_LOST" } })
        expect(completed).toMatchObject({ type: "agent_completed", depth: 0, status: "failed" })
      }
      // the closing events are in the log: a resume on B replays the whole run, ending the same way
      const late = yield* b.socket("lost")
      late.send({ type: "resume_run", run_id: runs[0]!, after_seq: 0, request_id: "late" })
      const resumed = yield* late.next("run_resumed", (m) => m.request_id === "late")
      expect(resumed.status).toBe("failed")
      const replayed = agentEvents(late, runs[0]!)
      expectWholeRun(replayed)
      expect(replayed.at(-2)).toMatchObject({ type: "agent_error", error: { code: "INSTANCE_LOST" } })
      // the slots are free again: two new runs are admitted at once on B
      expect((yield* startRun(b, "lost", { agent: "ticker", user_request: "steps=2 interval_ms=10" })).status).toBe(202)
      expect((yield* startRun(b, "lost", { agent: "ticker", user_request: "steps=2 interval_ms=10" })).status).toBe(202)
      expect(b.alive()).toBe(true)
    }).pipe(Effect.scoped), 60_000)

  it.live("redis-server stopped (SIGSTOP, the connections stay up): /ready answers 503 redis down without waiting for it; 200 once it answers again", () =>
    Effect.gen(function*() {
      const { a, redis } = yield* cluster()
      const pid = redis.pid()!
      process.kill(pid, "SIGSTOP")
      // a safety net: before the fix /ready waited for Redis; it answers again after 8 s whatever happens
      const safety = setTimeout(() => process.kill(pid, "SIGCONT"), 8000)
      yield* Effect.addFinalizer(() => Effect.sync(() => {
        clearTimeout(safety)
        process.kill(pid, "SIGCONT")
      }))
      const during = yield* Effect.promise(() => a.http("/ready").then(async (r) => ({ status: r.status, body: await r.json() as { components: { redis: { status: string } } } })))
      clearTimeout(safety)
      expect(during.status).toBe(503)
      expect(during.body.components.redis.status).toBe("down")
      process.kill(pid, "SIGCONT")
      yield* eventually(() => a.http("/ready").then((r) => r.status), (s) => s === 200)
    }).pipe(Effect.scoped), 60_000)

  it.live("redis-server killed mid-run and restarted empty: no crash, /ready 503 then 200, a new epoch, fan-out works again", () =>
    Effect.gen(function*() {
      const { a, b, redis } = yield* cluster()
      const onA = yield* a.socket("out")
      const onB = yield* b.socket("out")
      const epochBefore = onB.received.find((m) => m.type === "connection_established")
      const long = (yield* startRun(a, "out", { agent: "ticker", user_request: "steps=200 interval_ms=25" })).body.run_id
      yield* onB.next("agent_thinking", (m) => m.run_id === long)
      yield* Effect.promise(() => redis.kill())
      const atKill = { a: agentEvents(onA, long).length, b: agentEvents(onB, long).length }
      for (const instance of [a, b]) {
        yield* eventually(() => instance.http("/ready").then((r) => r.status), (s) => s === 503)
      }
      yield* Effect.promise(() => redis.restart())
      for (const instance of [a, b]) {
        yield* eventually(() => instance.http("/ready").then((r) => r.status), (s) => s === 200)
      }
      const duringOutage = { a: agentEvents(onA, long).length - atKill.a, b: agentEvents(onB, long).length - atKill.b }
      // the run on A went on: its own sockets kept getting its events during the outage
      yield* onA.runEvents(long)
      console.log(
        `redis outage: events of the run on A delivered during the outage: on A ${duringOutage.a}, on B ${duringOutage.b}; ` +
          `in all on A ${agentEvents(onA, long).length}, on B ${agentEvents(onB, long).length}`
      )
      expect(duringOutage.a).toBeGreaterThan(0)
      // a new connection sees a new epoch (Redis came back without its data)
      const fresh = yield* eventually(
        () => Effect.runPromise(Effect.scoped(Effect.map(b.socket("out2"), (c) => c.received[0]))),
        (m) => m?.type === "connection_established" && epochBefore?.type === "connection_established" && m.server_epoch !== epochBefore.server_epoch
      )
      expect(fresh?.type).toBe("connection_established")
      // fan-out works again: a new run on A reaches B, whole and in order (the subscriptions were restored)
      const after = yield* startRun(a, "out", { agent: "ticker", user_request: "steps=5 interval_ms=10" })
      expect(after.status).toBe(202)
      yield* onB.runEvents(after.body.run_id)
      expectWholeRun(agentEvents(onB, after.body.run_id))
      expect(a.alive() && b.alive()).toBe(true)
      // the outage is logged once per connection, not once per reconnect attempt
      for (const instance of [a, b]) {
        expect(instance.output()).not.toContain("NodeRedis client error")
        const lost = instance.output().split("\n").filter((l) => /connection lost; reconnecting/.test(l))
        expect(lost.length).toBeGreaterThan(0)
        expect(lost.length).toBeLessThanOrEqual(4)
      }
    }).pipe(Effect.scoped), 60_000)
})

