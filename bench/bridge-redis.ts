/**
 * The Redis bridge against the in-memory one: delivered events per second and
 * CPU µs per delivered event, summed over both "instances" (one process here:
 * two RedisInstance + bridge layers on one event loop) and redis-server.
 *
 * Load: USERS users, each with one connection on A and one on B; EVENTS
 * events emitted on A round-robin over the users, in batches of BATCH
 * between event-loop turns. Memory: the same users with both connections on
 * one in-memory bridge. A run ends when every connection got every event.
 * Also prints each instance's Redis connections (and the server's client
 * count) and what B received when it serves only a tenth of the users
 * (per-user channels: Redis sends B only those users' events).
 *
 * Run: `npm exec -- node bench/bridge-redis.ts` (needs redis-server on PATH).
 * Env: EVENTS (default 200000), USERS (default 100), BATCH (default 100).
 */
import { Context, Effect, Layer } from "effect"
import { readFileSync } from "node:fs"
import * as RedisInstance from "../src/layers/RedisInstance.ts"
import * as WebSocketBridgeMemory from "../src/layers/WebSocketBridgeMemory.ts"
import * as WebSocketBridgeRedis from "../src/layers/WebSocketBridgeRedis.ts"
import type { AgentEvent } from "../src/protocol/Protocol.ts"
import { type BridgeConnection, WebSocketBridge } from "../src/services/WebSocketBridge.ts"
import { startRedis } from "../test/fixtures/redisServer.ts"

const EVENTS = Number(process.env.EVENTS ?? 200_000)
const USERS = Number(process.env.USERS ?? 100)
const BATCH = Number(process.env.BATCH ?? 100)

const CLK_TCK = 100
/** CPU µs a process spent so far (user + system), from /proc. */
const procCpuMicros = (pid: number): number => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  return ((Number(fields[11]) + Number(fields[12])) / CLK_TCK) * 1e6
}
const selfCpuMicros = () => {
  const u = process.cpuUsage()
  return u.user + u.system
}

const event = (user: number, seq: number): AgentEvent => ({
  type: "agent_thinking",
  reasoning: "thinking about the next step of the plan, with a sentence of typical length",
  event_id: `run-${user}:${seq}`,
  run_id: `run-${user}`,
  thread_id: "thread-1",
  user_id: `user-${user}`,
  agent_name: "assistant",
  depth: 0,
  seq,
  timestamp: new Date(0).toISOString()
})

/** A connection that counts and checks order per run. */
const counter = (id: string, user_id: string, onEach: () => void) => {
  let last = 0
  let disorder = 0
  const connection: BridgeConnection = {
    id,
    user_id,
    send: (_frame, e) => {
      if (e !== undefined) {
        if (e.seq !== last + 1) disorder++
        last = e.seq
      }
      onEach()
    }
  }
  return { connection, disorder: () => disorder }
}

const turn = () => new Promise<void>((resolve) => setImmediate(resolve))

interface Result {
  readonly name: string
  readonly delivered: number
  readonly seconds: number
  readonly nodeCpuMicros: number
  readonly redisCpuMicros: number
  readonly disorder: number
}

const report = (r: Result) => {
  const cpu = r.nodeCpuMicros + r.redisCpuMicros
  console.log(
    `${r.name.padEnd(8)} events/s ${Math.round(EVENTS / r.seconds).toString().padStart(8)}  delivered/s ${Math.round(r.delivered / r.seconds).toString().padStart(8)}  ` +
      `CPU µs/delivered event: node ${(r.nodeCpuMicros / r.delivered).toFixed(2)} + redis ${(r.redisCpuMicros / r.delivered).toFixed(2)} = ${(cpu / r.delivered).toFixed(2)}  ` +
      `(per emitted event ${(cpu / EVENTS).toFixed(2)})  out of order: ${r.disorder}`
  )
}

/** Emits EVENTS on `emitter` and waits until `expected` deliveries happened. */
const drive = async (name: string, emit: (e: AgentEvent) => void, expected: number, counted: { n: number; done?: () => void }, redisPid?: number) => {
  const seqs = new Array<number>(USERS).fill(0)
  const finished = new Promise<void>((resolve) => {
    counted.done = resolve
  })
  const cpu0 = selfCpuMicros()
  const redis0 = redisPid === undefined ? 0 : procCpuMicros(redisPid)
  const t0 = performance.now()
  for (let i = 0; i < EVENTS; i++) {
    const user = i % USERS
    emit(event(user, ++seqs[user]!))
    if (i % BATCH === BATCH - 1) await turn()
  }
  if (counted.n < expected) await finished
  const seconds = (performance.now() - t0) / 1000
  return {
    name,
    delivered: counted.n,
    seconds,
    nodeCpuMicros: selfCpuMicros() - cpu0,
    redisCpuMicros: redisPid === undefined ? 0 : procCpuMicros(redisPid) - redis0
  }
}

const main = Effect.gen(function*() {
  const server = yield* Effect.acquireRelease(Effect.promise(() => startRedis()), (s) => Effect.promise(() => s.stop()))
  const redisPid = server.pid()!
  const build = (id: string) =>
    Effect.map(Layer.build(WebSocketBridgeRedis.layer.pipe(Layer.provideMerge(RedisInstance.layer({ url: server.url, instanceId: id })))), (c) => ({
      bridge: Context.get(c, WebSocketBridge),
      redis: Context.get(c, RedisInstance.RedisInstance)
    }))

  // warm-up + in-memory
  {
    const memory = Context.get(yield* Layer.build(WebSocketBridgeMemory.layer), WebSocketBridge)
    const counted: { n: number; done?: () => void } = { n: 0 }
    const expected = EVENTS * 2
    const conns = []
    for (let u = 0; u < USERS; u++) {
      for (const tab of ["a", "b"]) {
        const c = counter(`${tab}${u}`, `user-${u}`, () => {
          if (++counted.n === expected) counted.done?.()
        })
        conns.push(c)
        yield* memory.register(c.connection)
      }
    }
    const r = yield* Effect.promise(() => drive("memory", (e) => memory.deliverSync!(e), expected, counted))
    report({ ...r, redisCpuMicros: 0, disorder: conns.reduce((s, c) => s + c.disorder(), 0) })
  }

  // Redis: every user on both instances (each scenario's instances close before the next one)
  yield* Effect.scoped(Effect.gen(function*() {
    const a = yield* build("bench-a")
    const b = yield* build("bench-b")
    const counted: { n: number; done?: () => void } = { n: 0 }
    const expected = EVENTS * 2
    const conns = []
    for (let u = 0; u < USERS; u++) {
      for (const [tab, inst] of [["a", a], ["b", b]] as const) {
        const c = counter(`${tab}${u}`, `user-${u}`, () => {
          if (++counted.n === expected) counted.done?.()
        })
        conns.push(c)
        yield* inst.bridge.register(c.connection)
      }
    }
    const clients = yield* Effect.promise(() => a.redis.client.sendCommand(["CLIENT", "LIST"]))
    console.log(
      `redis connections per instance: A ${a.redis.connections()}, B ${b.redis.connections()}; redis-server clients: ${String(clients).trim().split("\n").length} ` +
        `(subscribed channels: A ${a.redis.stats.channels}, B ${b.redis.stats.channels})`
    )
    const r = yield* Effect.promise(() => drive("redis", (e) => a.bridge.deliverSync!(e), expected, counted, redisPid))
    report({ ...r, disorder: conns.reduce((s, c) => s + c.disorder(), 0) })
    console.log(`  A published ${a.redis.stats.published}, dropped ${a.redis.stats.dropped}, failed ${a.redis.stats.failed}; B received ${b.redis.stats.received}`)
  }))

  // Redis: B serves a tenth of the users (per-user channels: B receives only theirs)
  yield* Effect.scoped(Effect.gen(function*() {
    const a = yield* build("bench-c")
    const b = yield* build("bench-d")
    const counted: { n: number; done?: () => void } = { n: 0 }
    const onB = Math.ceil(USERS / 10)
    const expected = EVENTS + (EVENTS / USERS) * onB
    for (let u = 0; u < USERS; u++) {
      const c = counter(`a${u}`, `user-${u}`, () => {
        if (++counted.n === expected) counted.done?.()
      })
      yield* a.bridge.register(c.connection)
      if (u < onB) {
        const d = counter(`b${u}`, `user-${u}`, () => {
          if (++counted.n === expected) counted.done?.()
        })
        yield* b.bridge.register(d.connection)
      }
    }
    const r = yield* Effect.promise(() => drive("redis10%", (e) => a.bridge.deliverSync!(e), expected, counted, redisPid))
    report({ ...r, disorder: 0 })
    console.log(`  B received ${b.redis.stats.received} of ${EVENTS} published (a single shared channel would deliver all ${EVENTS} to B for parsing)`)
  }))
}).pipe(Effect.scoped)

console.log(`bridge bench: ${EVENTS} events, ${USERS} users, batches of ${BATCH}, node ${process.version}`)
Effect.runPromise(main).then(() => process.exit(0), (e) => {
  console.error(e)
  process.exit(1)
})
