/**
 * Instance leases and the recovery of a lost instance's runs (issue 12), in
 * one process against a real `redis-server`: what a run's log leaves open and
 * the order it is closed in; a paused instance's run closed by another
 * (INSTANCE_LOST, innermost first, in the log and through the bridge, the slot
 * freed long before it would expire) and the paused instance fenced out
 * afterwards; a live lease is left alone.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Logger, Option, Redacted, References, Schedule } from "effect"
import { Redis } from "effect/persistence"
import * as AgentInstanceFactoryLayer from "../../src/layers/AgentInstanceFactory.ts"
import * as ConversationStoreMemory from "../../src/layers/ConversationStoreMemory.ts"
import * as ExecutionEngineFactoryLayer from "../../src/layers/ExecutionEngineFactory.ts"
import * as InstanceLeaseRedis from "../../src/layers/InstanceLeaseRedis.ts"
import * as RedisInstance from "../../src/layers/RedisInstance.ts"
import * as RunAdmissionRedis from "../../src/layers/RunAdmissionRedis.ts"
import * as RunLogRedis from "../../src/layers/RunLogRedis.ts"
import * as WebSocketBridgeRecording from "../../src/layers/WebSocketBridgeRecording.ts"
import type { AgentEvent } from "../../src/protocol/Protocol.ts"
import { ConversationStore } from "../../src/services/ConversationStore.ts"
import { ExecutionEngineFactory } from "../../src/services/ExecutionEngineFactory.ts"
import { RunAdmission } from "../../src/services/RunAdmission.ts"
import { RunLog } from "../../src/services/RunLog.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"
import { startProxy } from "../fixtures/proxy.ts"
import { describeRedis, instanceLayer, server, url } from "../fixtures/redisLayers.ts"
import { SETTINGS } from "../fixtures/runlog-suite.ts"
import { QuietLogs, registry } from "../fixtures/runtime.ts"

const LIMITS = { maxRunsPerUser: 5, maxRuns: 100, runStartsPerSecond: 0, runStartBurst: 10, idempotencyWindowMs: 60_000 }

let n = 0
const stamp = (run_id: string, user_id: string) => {
  let seq = 0
  return (agent_name: string, depth: number, body: Record<string, unknown>): AgentEvent => {
    seq++
    n++
    return {
      ...body,
      event_id: `${run_id}:${seq}`,
      run_id,
      thread_id: "th",
      user_id,
      agent_name,
      depth,
      seq,
      timestamp: new Date(Date.now() - 1000 + seq).toISOString()
    } as AgentEvent
  }
}

/** root ▸ calc (depth 1) ▸ tool t1, inner (depth 2) ▸ tool t2; a finished tool t0 at depth 0. */
const nestedRun = (run_id: string, user_id: string): ReadonlyArray<AgentEvent> => {
  const e = stamp(run_id, user_id)
  return [
    e("root", 0, { type: "agent_started", task_description: "go" }),
    e("root", 0, { type: "tool_executing", tool_name: "look", execution_id: "t0", parameters: {} }),
    e("root", 0, { type: "tool_completed", tool_name: "look", execution_id: "t0", success: true, results: { status: "success", output: 1 }, duration_ms: 1 }),
    e("calc", 1, { type: "agent_started", task_description: "sub" }),
    e("calc", 1, { type: "tool_executing", tool_name: "slow", execution_id: "t1", parameters: {} }),
    e("inner", 2, { type: "agent_started", task_description: "deeper" }),
    e("inner", 2, { type: "tool_executing", tool_name: "slower", execution_id: "t2", parameters: {} })
  ]
}

describe("openParts / closingBodies", () => {
  it("closes innermost first: deepest depth first, a depth's tool calls before its agent, then INSTANCE_LOST at depth 0", () => {
    const parts = InstanceLeaseRedis.openParts(nestedRun("r", "u"), "fallback")
    expect(parts.ended).toBe(false)
    expect(parts.root.agent_name).toBe("root")
    const bodies = InstanceLeaseRedis.closingBodies(parts, "inst-x", Date.now())
    expect(bodies.map((b) => [b.depth, b.agent_name, b.body.type, "execution_id" in b.body ? b.body.execution_id : "status" in b.body ? b.body.status : ""])).toEqual([
      [2, "inner", "tool_completed", "t2"],
      [2, "inner", "agent_completed", "cancelled"],
      [1, "calc", "tool_completed", "t1"],
      [1, "calc", "agent_completed", "cancelled"],
      [0, "root", "agent_error", ""],
      [0, "root", "agent_completed", "failed"]
    ])
    expect(bodies[0]!.body).toMatchObject({ success: false, results: { status: "cancelled" } })
    expect(bodies[4]!.body).toMatchObject({ error: { code: "INSTANCE_LOST" } })
  })

  it("a finished sub-agent and a finished run leave nothing open", () => {
    const events = nestedRun("r", "u")
    const e = stamp("r2", "u")
    const finished = [
      e("root", 0, { type: "agent_started", task_description: "go" }),
      e("calc", 1, { type: "agent_started", task_description: "sub" }),
      e("calc", 1, { type: "agent_completed", status: "completed", final_response: "x", duration_ms: 1 }),
      e("root", 0, { type: "agent_completed", status: "completed", final_response: "x", duration_ms: 1 })
    ]
    expect(InstanceLeaseRedis.openParts(finished, "root")).toMatchObject({ ended: true, open: [] })
    expect(InstanceLeaseRedis.openParts(events.slice(0, 3), "root").open).toEqual([])
  })
})

describeRedis("InstanceLeaseRedis on a real redis-server", () => {
  /** An instance: its RedisInstance, a fenced run log, a recording bridge, the lease (leaseMs 300 unless given). */
  const survivor = (instanceId: string, commandUrl?: string, leaseMs = 300) =>
    InstanceLeaseRedis.layer({ leaseMs }).pipe(
      Layer.provideMerge(WebSocketBridgeRecording.layer),
      Layer.provideMerge(Layer.unwrap(Effect.sync(() => RunLogRedis.layer({ url: Redacted.make(url()), settings: SETTINGS, instanceId })))),
      Layer.provideMerge(RunAdmissionRedis.layer(LIMITS, { slotTtlMs: 60_000 })),
      Layer.provideMerge(commandUrl === undefined ? instanceLayer(instanceId) : RedisInstance.layer({ url: commandUrl, instanceId }))
    )
  /** A "paused" instance: a fenced log and admission, a lease entry that is never renewed. */
  const paused = (instanceId: string) =>
    Layer.mergeAll(
      Layer.unwrap(Effect.sync(() => RunLogRedis.layer({ url: Redacted.make(url()), settings: SETTINGS, instanceId }))),
      RunAdmissionRedis.layer(LIMITS, { slotTtlMs: 60_000 })
    ).pipe(Layer.provideMerge(instanceLayer(instanceId)))

  const build = <A, E>(layer: Layer.Layer<A, E>) => Layer.build(layer)

  /** Gives `instanceId` a lease of 300 ms that is never renewed (the instance is paused). */
  const pausedLease = (redis: Redis.Redis["Service"], instanceId: string) =>
    redis.eval(Redis.script((...args: ReadonlyArray<string | number>) => args, {
      numberOfKeys: 0,
      lua: "local t = redis.call('TIME'); redis.call('ZADD', 'agentwire:instances', t[1] * 1000 + math.floor(t[2] / 1000) + 300, ARGV[1]); return 1"
    }))(instanceId)

  it.live("a paused instance's run is closed by another once its lease expired; the slot is freed; the paused instance is fenced out", () =>
    Effect.gen(function*() {
      const dead = yield* build(paused("inst-paused"))
      // the instances share a history store (as with PostgreSQL): the lost instance recorded the start
      const live = yield* build(survivor("inst-survivor").pipe(Layer.provideMerge(ConversationStoreMemory.layer())))
      const history = Context.get(live, ConversationStore)
      const deadLog = Context.get(dead, RunLog)
      const deadRedis = Context.get(dead, Redis.Redis)
      const user_id = `u${process.pid}`
      const context = yield* UserExecutionContext.make({ user_id, thread_id: "th", request_id: "rq-1" })
      const admitted = yield* Context.get(dead, RunAdmission).admit(context, "root")
      expect(admitted._tag).toBe("Admitted")
      yield* history.recordRun({ run_id: context.run_id, user_id, thread_id: "th", agent_name: "root", status: "running", started_at: Date.now() })
      // the paused instance's lease: 300 ms, never renewed
      yield* pausedLease(deadRedis, "inst-paused")
      const events = nestedRun(context.run_id, user_id)
      for (const event of events) expect(yield* deadLog.append(event, JSON.stringify(event))).toBe("ok")
      const lease = Context.get(live, InstanceLeaseRedis.InstanceLease)
      const admission = Context.get(live, RunAdmission)
      expect(yield* admission.activeRuns(user_id)).toBe(1)
      // a live lease is left alone; once it expired, the survivor's own pass closes the run
      expect(yield* lease.recover).toEqual([])
      const recorded = Context.get(live, WebSocketBridgeRecording.RecordedEvents)
      yield* recorded.waitFor((e) => e.run_id === context.run_id && e.type === "agent_completed" && e.depth === 0)
      // passes run one at a time: this one starts once the pass that closed the run has finished
      expect(yield* lease.recover).toEqual([])
      const page = yield* Context.get(live, RunLog).read(user_id, context.run_id, events.length, { maxEvents: 100, maxBytes: 1 << 20 })
      const closing = page.events.map((e) => JSON.parse(e.frame) as AgentEvent)
      expect(closing.map((e) => [e.seq, e.depth, e.type])).toEqual([
        [8, 2, "tool_completed"],
        [9, 2, "agent_completed"],
        [10, 1, "tool_completed"],
        [11, 1, "agent_completed"],
        [12, 0, "agent_error"],
        [13, 0, "agent_completed"]
      ])
      expect(page.summary.status).toBe("failed")
      // emitted through the bridge too, the same events in the same order, after the log's last event again: the
      // paused instance appended it and never published it (here it has no bridge at all), so live sockets may lack it
      expect(yield* recorded.ofRun(context.run_id)).toEqual([events.at(-1), ...closing])
      // history says how it ended too (it said running)
      const thread = yield* history.getThread({ user_id, thread_id: "th" })
      expect(Option.getOrThrow(thread).runs.find((r) => r.run_id === context.run_id)).toMatchObject({ status: "failed", error_code: "INSTANCE_LOST" })
      // the slot is free now, though it would have lived 60 s
      expect(yield* admission.activeRuns(user_id)).toBe(0)
      expect(lease.stats.runsClosed).toBe(1)
      // the paused instance comes back: its appends are fenced (not logged, so not delivered), its release changes nothing
      const late = stamp(context.run_id, user_id)
      for (let i = 0; i < 7; i++) late("calc", 1, {})
      const more = late("calc", 1, { type: "agent_thinking", reasoning: "still here" })
      expect(more.seq).toBe(8)
      expect(yield* deadLog.append(more, JSON.stringify(more))).toBe("fenced")
      const afterLog = { ...events[0]!, seq: 14, event_id: `${context.run_id}:14`, type: "agent_thinking", reasoning: "x" } as AgentEvent
      expect(yield* deadLog.append(afterLog, JSON.stringify(afterLog))).toBe("fenced")
      yield* deadLog.release(context.run_id)
      const summary = yield* deadLog.summary(user_id, context.run_id)
      expect([summary.status, summary.last_seq]).toEqual(["failed", 13])
      // nothing left of the lost instance
      const left = yield* deadRedis.send<number>("EXISTS", "agentwire:instance:inst-paused:runs")
      const score = yield* deadRedis.send<string | null>("ZSCORE", "agentwire:instances", "inst-paused")
      expect([left, score]).toEqual([0, null])
    }).pipe(Effect.scoped, Effect.provide(QuietLogs)), 20_000)

  it.live("a paused instance's run that another instance closed stops at its next event (INSTANCE_LOST), frees its resources and delivers nothing more", () => {
    const lines: Array<string> = []
    const captured = Logger.layer([Logger.map(Logger.formatLogFmt, (line) => void lines.push(line))])
    return Effect.gen(function*() {
      // the paused instance runs a real engine over its fenced log; long runs fit in its event cap
      const dead = yield* build(
        ExecutionEngineFactoryLayer.layer.pipe(
          Layer.provideMerge(AgentInstanceFactoryLayer.layer),
          Layer.provideMerge(WebSocketBridgeRecording.layer),
          Layer.provideMerge(paused("inst-paused-engine")),
          Layer.provide(registry)
        )
      )
      const live = yield* build(survivor("inst-survivor-engine"))
      yield* pausedLease(Context.get(dead, Redis.Redis), "inst-paused-engine")
      const engines = Context.get(dead, ExecutionEngineFactory)
      const deadRecorded = Context.get(dead, WebSocketBridgeRecording.RecordedEvents)
      const liveRecorded = Context.get(live, WebSocketBridgeRecording.RecordedEvents)
      const user_id = `v${process.pid}`
      const context = yield* UserExecutionContext.make({ user_id })
      // about 10 s if nothing stops it
      const handle = yield* engines.start(context, "ticker", "steps=2000 interval_ms=5")
      yield* deadRecorded.waitFor((e) => e.run_id === context.run_id && e.seq === 3)
      // the lease expires; the survivor's own pass closes the run with INSTANCE_LOST
      const closed = yield* liveRecorded.waitFor((e) => e.run_id === context.run_id && e.type === "agent_completed" && e.depth === 0)
      // the paused instance's run stops at its next append instead of running to its end
      const outcome = yield* handle.await
      expect(outcome).toMatchObject({ status: "failed", error: { code: "INSTANCE_LOST" } })
      expect(yield* engines.activeRuns).toBe(0)
      expect(yield* Context.get(dead, RunAdmission).activeRuns(user_id)).toBe(0)
      // its own sockets got nothing past the takeover: no second ending, no event after the survivor's
      const local = yield* deadRecorded.ofRun(context.run_id)
      expect(local.every((e) => e.type === "agent_thinking" || e.type === "agent_started")).toBe(true)
      expect(local.at(-1)!.seq).toBeLessThan(closed.seq - 1)
      // the log holds the survivor's ending, once
      const summary = yield* Context.get(live, RunLog).summary(user_id, context.run_id)
      expect([summary.status, summary.last_seq]).toEqual(["failed", closed.seq])
      // said once as what it is, not as an event past the hard cap
      expect(lines.filter((l) => l.includes("another instance took this run over")).length).toBe(1)
      expect(lines.some((l) => l.includes("hard cap"))).toBe(false)
      // its "run ended" line (and history) says what its clients saw
      expect(lines.find((l) => l.includes("run ended") && l.includes(context.run_id))).toMatch(/outcome=failed.*error_code=INSTANCE_LOST/)
    }).pipe(Effect.scoped, Effect.provide(captured), Effect.provide(Layer.succeed(References.MinimumLogLevel, "Info")))
  }, 30_000)

  it.live("a stop of a run another instance closed (INSTANCE_LOST), sent to the paused instance where it still executes, answers no run: the run was not stopped by it", () =>
    Effect.gen(function*() {
      const dead = yield* build(
        ExecutionEngineFactoryLayer.layer.pipe(
          Layer.provideMerge(AgentInstanceFactoryLayer.layer),
          Layer.provideMerge(WebSocketBridgeRecording.layer),
          Layer.provideMerge(paused("inst-zombie")),
          Layer.provide(registry)
        )
      )
      const live = yield* build(survivor("inst-zombie-survivor"))
      yield* pausedLease(Context.get(dead, Redis.Redis), "inst-zombie")
      const engines = Context.get(dead, ExecutionEngineFactory)
      const user_id = `z${process.pid}`
      const context = yield* UserExecutionContext.make({ user_id })
      // one event every 3 s: between two of them the survivor closes the run, and the zombie does not know yet
      const handle = yield* engines.start(context, "ticker", "steps=20 interval_ms=3000")
      yield* Context.get(dead, WebSocketBridgeRecording.RecordedEvents).waitFor((e) => e.run_id === context.run_id && e.seq === 1)
      yield* Context.get(live, WebSocketBridgeRecording.RecordedEvents).waitFor((e) =>
        e.run_id === context.run_id && e.type === "agent_completed" && e.depth === 0
      )
      expect(yield* engines.runState(user_id, context.run_id)).toBe("active")
      // the log says failed: a stop finds it already ended, as its document says ({"run_ids": []})
      expect(yield* engines.stop({ user_id, run_id: context.run_id })).toEqual([])
      yield* handle.await
      const summary = yield* Context.get(live, RunLog).summary(user_id, context.run_id)
      expect(summary.status).toBe("failed")
    }).pipe(Effect.scoped, Effect.provide(QuietLogs)), 30_000)

  it.live("a takeover Redis ran but whose answer was lost (the connection dropped) is asked again: the run is closed, not left open", () =>
    Effect.gen(function*() {
      const proxy = yield* Effect.promise(() => startProxy(server.current!.port))
      yield* Effect.addFinalizer(() => Effect.promise(() => proxy.close()))
      const dead = yield* build(paused("inst-lost-answer"))
      const user_id = `lost-answer-${process.pid}`
      const context = yield* UserExecutionContext.make({ user_id, thread_id: "th" })
      const events = nestedRun(context.run_id, user_id)
      for (const event of events) expect(yield* Context.get(dead, RunLog).append(event, JSON.stringify(event))).toBe("ok")
      // the survivor's command connection (lease, recovery) goes through the proxy: the takeover of the run
      // reaches Redis, which runs it; its answer ({'ok', user}) is swallowed and the connection then dies
      let cut = false
      proxy.setTap((direction, chunk, mute) => {
        if (cut) return
        const text = chunk.toString("latin1")
        if (direction === "up" && text.includes("EVALSHA") && text.includes(context.run_id)) mute()
        if (direction === "down" && text.includes(user_id)) {
          cut = true
          proxy.cutAll()
        }
      })
      const live = yield* build(survivor("inst-lost-answer-survivor", `redis://127.0.0.1:${proxy.port}`))
      yield* pausedLease(Context.get(dead, Redis.Redis), "inst-lost-answer")
      // reconnected, the survivor's own passes close the run
      const closed = yield* Context.get(live, WebSocketBridgeRecording.RecordedEvents).waitFor((e) =>
        e.run_id === context.run_id && e.type === "agent_completed" && e.depth === 0
      ).pipe(Effect.timeoutOption("10 seconds"))
      expect(cut).toBe(true)
      expect(Option.isSome(closed)).toBe(true)
      const summary = yield* Context.get(live, RunLog).summary(user_id, context.run_id)
      expect([summary.status, summary.last_seq]).toEqual(["failed", events.length + 6])
    }).pipe(Effect.scoped, Effect.provide(QuietLogs)), 30_000)

  it.live("an instance cut off from Redis whose run was closed meanwhile: its buffered events are dropped at the flush (fenced), and the run's next append is answered fenced", () =>
    Effect.gen(function*() {
      const proxy = yield* Effect.promise(() => startProxy(server.current!.port))
      yield* Effect.addFinalizer(() => Effect.promise(() => proxy.close()))
      // the cut-off instance reaches Redis through the proxy only
      const cutLog = Context.get(
        yield* build(RunLogRedis.layer({ url: Redacted.make(`redis://127.0.0.1:${proxy.port}`), settings: SETTINGS, instanceId: "inst-cut" })),
        RunLog
      )
      const live = yield* build(survivor("inst-cut-survivor"))
      yield* pausedLease(Context.get(live, Redis.Redis), "inst-cut")
      const user_id = `w${process.pid}`
      const e = stamp("run-cut", user_id)
      const first = [e("root", 0, { type: "agent_started", task_description: "go" }), e("root", 0, { type: "agent_thinking", reasoning: "1" })]
      for (const event of first) expect(yield* cutLog.append(event, JSON.stringify(event))).toBe("ok")
      proxy.setDown(true)
      proxy.cutAll()
      const later = [e("root", 0, { type: "agent_thinking", reasoning: "2" }), e("root", 0, { type: "agent_thinking", reasoning: "3" })]
      for (const event of later) expect(yield* cutLog.append(event, JSON.stringify(event))).toBe("ok")
      expect((yield* cutLog.stats).store).toEqual({ up: false, bufferedEvents: 2 })
      // meanwhile its lease expired and the survivor closed the run
      const recorded = Context.get(live, WebSocketBridgeRecording.RecordedEvents)
      yield* recorded.waitFor((event) => event.run_id === "run-cut" && event.type === "agent_completed" && event.depth === 0)
      proxy.setDown(false)
      // back: the buffered events are refused (fenced) and dropped, not logged
      yield* Effect.repeat(cutLog.stats, { until: (s) => s.store?.up === true && s.store.bufferedEvents === 0, schedule: Schedule.spaced(20) })
      const next = e("root", 0, { type: "agent_thinking", reasoning: "4" })
      expect(yield* cutLog.append(next, JSON.stringify(next))).toBe("fenced")
      const page = yield* Context.get(live, RunLog).read(user_id, "run-cut", 0, { maxEvents: 100, maxBytes: 1 << 20 })
      expect(page.events.map((logged) => [logged.seq, logged.type])).toEqual([
        [1, "agent_started"],
        [2, "agent_thinking"],
        [3, "agent_error"],
        [4, "agent_completed"]
      ])
    }).pipe(Effect.scoped, Effect.provide(QuietLogs)), 30_000)

  it.live("an instance cut off from Redis longer than its lease stops its runs itself (INSTANCE_LOST on its own sockets, nothing after), frees them, and its late events never reach the log", () =>
    Effect.gen(function*() {
      const proxy = yield* Effect.promise(() => startProxy(server.current!.port))
      yield* Effect.addFinalizer(() => Effect.promise(() => proxy.close()))
      const cutUrl = `redis://127.0.0.1:${proxy.port}`
      // a whole instance (engine, fenced log, lease, admission) that reaches Redis through the proxy only
      const cut = yield* build(
        ExecutionEngineFactoryLayer.layer.pipe(
          Layer.provideMerge(AgentInstanceFactoryLayer.layer),
          Layer.provideMerge(RunAdmissionRedis.layer(LIMITS, { slotTtlMs: 300 })),
          Layer.provideMerge(InstanceLeaseRedis.layer({ leaseMs: 300 })),
          Layer.provideMerge(WebSocketBridgeRecording.layer),
          Layer.provideMerge(RunLogRedis.layer({ url: Redacted.make(cutUrl), settings: SETTINGS, instanceId: "inst-cut-engine" })),
          Layer.provideMerge(RedisInstance.layer({ url: cutUrl, instanceId: "inst-cut-engine" })),
          Layer.provide(registry)
        )
      )
      const live = yield* build(survivor("inst-cut-engine-survivor"))
      const engines = Context.get(cut, ExecutionEngineFactory)
      const cutRecorded = Context.get(cut, WebSocketBridgeRecording.RecordedEvents)
      const liveRecorded = Context.get(live, WebSocketBridgeRecording.RecordedEvents)
      const user_id = `x${process.pid}`
      const context = yield* UserExecutionContext.make({ user_id })
      // about 9 s if nothing stops it (within the log's 100 events)
      const handle = yield* engines.start(context, "ticker", "steps=90 interval_ms=100")
      yield* cutRecorded.waitFor((e) => e.run_id === context.run_id && e.seq === 3)
      proxy.setDown(true)
      proxy.cutAll()
      // still cut off: the run ends here on its own, once the lease could not be renewed
      const outcome = yield* handle.await.pipe(Effect.timeout("5 seconds"))
      expect(outcome).toMatchObject({ status: "failed", error: { code: "INSTANCE_LOST" } })
      // its fiber and slot go right after (the slot's release follows the outcome)
      yield* Effect.repeat(Effect.zip(engines.activeRuns, Context.get(cut, RunAdmission).activeRuns()), {
        until: ([runs, slots]) => runs === 0 && slots === 0,
        schedule: Schedule.spaced(10)
      }).pipe(Effect.timeout("1 second"))
      // its own sockets saw the run end, once, with nothing after it
      const local = yield* cutRecorded.ofRun(context.run_id)
      expect(local.filter((e) => e.type === "agent_completed" && e.depth === 0).length).toBe(1)
      expect(local.slice(-2).map((e) => [e.type, e.type === "agent_error" ? e.error.code : e.type === "agent_completed" ? e.status : ""])).toEqual([
        ["agent_error", "INSTANCE_LOST"],
        ["agent_completed", "failed"]
      ])
      // the survivor closed it too, in the log, and the cut instance's buffered events never get there
      const closed = yield* liveRecorded.waitFor((e) => e.run_id === context.run_id && e.type === "agent_completed" && e.depth === 0)
      proxy.setDown(false)
      const cutLog = Context.get(cut, RunLog)
      yield* Effect.repeat(cutLog.stats, { until: (s) => s.store?.up === true && s.store.bufferedEvents === 0, schedule: Schedule.spaced(20) })
      const summary = yield* Context.get(live, RunLog).summary(user_id, context.run_id)
      expect([summary.status, summary.last_seq]).toEqual(["failed", closed.seq])
      const lastLocal = local.at(-1)!.seq
      expect(yield* cutRecorded.ofRun(context.run_id).pipe(Effect.map((all) => all.at(-1)!.seq))).toBe(lastLocal)
      expect(yield* Context.get(live, RunAdmission).activeRuns(user_id)).toBe(0)
    }).pipe(Effect.scoped, Effect.provide(QuietLogs)), 30_000)

  it.live("two Redis stalls in a row, each shorter than the lease, do not lose it (reviewer: a renewal sent into the first stall proved the lease only from when it was sent; the next one fell into the second stall, and runs ended INSTANCE_LOST)", () =>
    Effect.gen(function*() {
      // leaseMs 4000: renewals every 1333 ms; stalls of 3 s and 2 s, the gap between them at most 1 s
      const built = yield* build(survivor("inst-stalls", undefined, 4000))
      const lease = Context.get(built, InstanceLeaseRedis.InstanceLease)
      let lost = 0
      yield* lease.onLost(() => void lost++)
      const pid = server.current!.pid()!
      yield* Effect.addFinalizer(() => Effect.sync(() => process.kill(pid, "SIGCONT")))
      const renewed = (more: number) => {
        const target = lease.stats.renewals + more
        return Effect.repeat(Effect.sync(() => lease.stats.renewals), { until: (n) => n >= target, schedule: Schedule.spaced(5) })
      }
      // the stalls begin right after a renewal, so a scheduled one is sent into the first
      yield* renewed(1)
      process.kill(pid, "SIGSTOP")
      yield* Effect.sleep("3 seconds")
      process.kill(pid, "SIGCONT")
      // the late answer, then the renewal it calls for at once (given up after 1 s: the old code waited 1333 ms)
      yield* renewed(2).pipe(Effect.timeoutOption("1 second"))
      // 2 s: the old code's lease (from the renewal sent into the first stall) ends within it; the new one's 2 s after
      process.kill(pid, "SIGSTOP")
      yield* Effect.sleep("2 seconds")
      process.kill(pid, "SIGCONT")
      yield* renewed(1)
      expect([lost, lease.expired()]).toEqual([0, false])
    }).pipe(Effect.scoped, Effect.provide(QuietLogs)), 30_000)

  it.live("a graceful stop gives the lease back; an instance's own renewal keeps it", () =>
    Effect.gen(function*() {
      const scope = yield* Effect.scope
      const context = yield* Layer.buildWithScope(survivor("inst-graceful"), scope)
      const lease = Context.get(context, InstanceLeaseRedis.InstanceLease)
      const redis = Context.get(context, Redis.Redis)
      yield* lease.renew
      expect(yield* redis.send<string | null>("ZSCORE", "agentwire:instances", "inst-graceful")).not.toBeNull()
      expect(lease.stats.lapses).toBe(0)
      return redis
    }).pipe(
      Effect.scoped,
      Effect.flatMap(() =>
        Effect.gen(function*() {
          const other = yield* build(survivor("inst-observer"))
          const redis = Context.get(other, Redis.Redis)
          expect(yield* redis.send<string | null>("ZSCORE", "agentwire:instances", "inst-graceful")).toBeNull()
        }).pipe(Effect.scoped)
      ),
      Effect.provide(QuietLogs)
    ), 20_000)
})
