import { expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Scope } from "effect"
import { DEFAULT_RUN_LIMITS } from "../../src/layers/AgentwireConfig.ts"
import * as RedisInstance from "../../src/layers/RedisInstance.ts"
import * as RunAdmissionMemory from "../../src/layers/RunAdmissionMemory.ts"
import * as RunAdmissionRedis from "../../src/layers/RunAdmissionRedis.ts"
import { type Admission, RunAdmission, type RunLimits } from "../../src/services/RunAdmission.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"
import { describeRedis, instanceLayer, server } from "../fixtures/redisLayers.ts"

const limits: RunLimits = { ...DEFAULT_RUN_LIMITS, maxRunsPerUser: 2, maxRuns: 100, runStartsPerSecond: 0, idempotencyWindowMs: 60_000 }

/** One admission "instance" on the suite's Redis, built in `scope` (closing it is the instance dying). */
const admissionIn = (scope: Scope.Scope, instanceId: string, l: RunLimits = limits, slotTtlMs?: number) =>
  Effect.map(
    Layer.buildWithScope(RunAdmissionRedis.layer(l, { slotTtlMs }).pipe(Layer.provideMerge(instanceLayer(instanceId))), scope),
    (context) => Context.get(context, RunAdmission)
  )
const admission = (instanceId: string, l?: RunLimits, slotTtlMs?: number) => Effect.flatMap(Effect.scope, (scope) => admissionIn(scope, instanceId, l, slotTtlMs))

const ctx = (user_id: string, request_id?: string, thread_id?: string) => UserExecutionContext.make({ user_id, request_id, thread_id })
const tagOf = (a: Admission) => a._tag

/** Limits of the forget test: a start budget that does not refill while the test runs. */
const budgeted: RunLimits = { ...limits, runStartsPerSecond: 0.001, runStartBurst: 1 }

/**
 * After an erase (`forgetUser`), a repeated request_id of the user starts a new run and their start budget is
 * whole again; another user's request ids stay remembered. `a` and `b` are two instances of one admission
 * (the same one in memory); the budget is `a`'s own.
 */
const forgetUserBehaviour = (a: RunAdmission["Service"], b: RunAdmission["Service"]) =>
  Effect.gen(function*() {
    const idem = { idempotency: { fingerprint: "fp", threadGiven: false } }
    const release = (admission: Admission) => (admission._tag === "Admitted" ? admission.release : Effect.void)
    const original = yield* a.admit(yield* ctx("erased", "req-f"), "echo", { ...idem, rateLimited: true })
    expect(tagOf(original)).toBe("Admitted")
    yield* release(original)
    expect(tagOf(yield* a.admit(yield* ctx("kept", "req-f"), "echo", idem))).toBe("Admitted")
    // remembered: a repeat is a duplicate, on either instance; the budget is spent
    expect(tagOf(yield* b.admit(yield* ctx("erased", "req-f"), "echo", idem))).toBe("Duplicate")
    expect((yield* Effect.flip(a.admit(yield* ctx("erased"), "echo", { rateLimited: true }))).reason).toBe("rate_limited")
    expect(a.forgetUser).toBeDefined()
    yield* a.forgetUser!("erased")
    // forgotten: the repeat is a new run (on the other instance too), and a's budget is whole again
    const again = yield* b.admit(yield* ctx("erased", "req-f"), "echo", idem)
    expect(tagOf(again)).toBe("Admitted")
    yield* release(again)
    expect(tagOf(yield* a.admit(yield* ctx("erased"), "echo", { rateLimited: true }))).toBe("Admitted")
    // another user's request id is still remembered
    expect(tagOf(yield* b.admit(yield* ctx("kept", "req-f"), "echo", idem))).toBe("Duplicate")
  })

it.effect("memory: forgetUser forgets the user's request ids and start budget, nobody else's", () =>
  Effect.gen(function*() {
    const memory = yield* RunAdmissionMemory.make(budgeted)
    yield* forgetUserBehaviour(memory, memory)
  }))

describeRedis("RunAdmissionRedis", () => {
  it.live("forgetUser forgets the user's request ids on every instance and this instance's start budget, nobody else's", () =>
    Effect.gen(function*() {
      yield* forgetUserBehaviour(yield* admission("adm-forget-a", budgeted), yield* admission("adm-forget-b", budgeted))
    }).pipe(Effect.scoped))

  it.live("the per-user limit holds across two instances; a release on one frees the slot for the other", () =>
    Effect.gen(function*() {
      const a = yield* admission("adm-a")
      const b = yield* admission("adm-b")
      const first = yield* a.admit(yield* ctx("u1"), "echo")
      expect(tagOf(yield* b.admit(yield* ctx("u1"), "echo"))).toBe("Admitted")
      const refusedOnA = yield* Effect.flip(a.admit(yield* ctx("u1"), "echo"))
      const refusedOnB = yield* Effect.flip(b.admit(yield* ctx("u1"), "echo"))
      expect([refusedOnA.reason, refusedOnA.limit, refusedOnB.reason, refusedOnB.code]).toEqual(["run_limit", 2, "run_limit", "RUN_LIMIT_EXCEEDED"])
      // another user is not affected
      expect(tagOf(yield* b.admit(yield* ctx("u2"), "echo"))).toBe("Admitted")
      expect(yield* a.activeRuns("u1")).toBe(2)
      // activeRuns() without a user is this instance's
      expect([yield* a.activeRuns(), yield* b.activeRuns()]).toEqual([1, 2])
      if (first._tag === "Admitted") {
        yield* first.release
        yield* first.release // idempotent
      }
      expect(yield* b.activeRuns("u1")).toBe(1)
      expect(tagOf(yield* b.admit(yield* ctx("u1"), "echo"))).toBe("Admitted")
    }).pipe(Effect.scoped))

  it.live("idempotent starts across instances: a repeat on B of A's request_id is its Duplicate; another payload or thread conflicts", () =>
    Effect.gen(function*() {
      const a = yield* admission("adm-a")
      const b = yield* admission("adm-b")
      const original = yield* ctx("u3", "req-1", "thread-1")
      const idem = (fingerprint: string, threadGiven: boolean) => ({ idempotency: { fingerprint, threadGiven } })
      expect(tagOf(yield* a.admit(original, "echo", idem("fp", false)))).toBe("Admitted")
      const repeat = yield* b.admit(yield* ctx("u3", "req-1"), "echo", idem("fp", false))
      expect(repeat).toEqual({ _tag: "Duplicate", run: { run_id: original.run_id, thread_id: "thread-1", request_id: "req-1", agent_name: "echo" } })
      expect(tagOf(yield* b.admit(yield* ctx("u3", "req-1", "thread-1"), "echo", idem("fp", true)))).toBe("Duplicate")
      expect((yield* Effect.flip(b.admit(yield* ctx("u3", "req-1", "thread-2"), "echo", idem("fp", true)))).reason).toBe("request_id_conflict")
      expect((yield* Effect.flip(b.admit(yield* ctx("u3", "req-1"), "echo", idem("other", false)))).reason).toBe("request_id_conflict")
      // duplicates take no slot
      expect(yield* a.activeRuns("u3")).toBe(1)
      // the same request_id of another user is another request
      expect(tagOf(yield* b.admit(yield* ctx("u4", "req-1"), "echo", idem("fp", false)))).toBe("Admitted")
    }).pipe(Effect.scoped))

  it.live("the process cap is per instance (server_busy after the user limit); a refused or rate-limited start takes no slot", () =>
    Effect.gen(function*() {
      const a = yield* admission("adm-a", { ...limits, maxRuns: 1, maxRunsPerUser: 1 })
      const b = yield* admission("adm-b", { ...limits, runStartsPerSecond: 1, runStartBurst: 1 })
      expect(tagOf(yield* a.admit(yield* ctx("u5"), "echo"))).toBe("Admitted")
      // the user's limit is checked first, as in memory
      expect((yield* Effect.flip(a.admit(yield* ctx("u5"), "echo"))).reason).toBe("run_limit")
      const busy = yield* Effect.flip(a.admit(yield* ctx("u6"), "echo"))
      expect([busy.reason, busy.limit, busy.retry_after_ms]).toEqual(["server_busy", 1, 1000])
      expect(yield* a.activeRuns("u6")).toBe(0)
      // B's own budget: the first start spends it, the second is refused and gives its slot back
      const first = yield* b.admit(yield* ctx("u6"), "echo", { rateLimited: true })
      expect(tagOf(first)).toBe("Admitted")
      expect((yield* Effect.flip(b.admit(yield* ctx("u6", "req-rl"), "echo", { rateLimited: true, idempotency: { fingerprint: "x", threadGiven: false } }))).reason)
        .toBe("rate_limited")
      expect(yield* b.activeRuns("u6")).toBe(1)
      // the refused start's request_id is not remembered: a retry is a fresh start, not a duplicate
      const redis = yield* Effect.flatMap(Effect.scope, (scope) =>
        Effect.map(Layer.buildWithScope(instanceLayer("reader"), scope), (c) => Context.get(c, RedisInstance.RedisInstance)))
      expect(yield* Effect.promise(() => redis.client.sendCommand(["EXISTS", RedisInstance.keys.userRequest("u6", "req-rl")]))).toBe(0)
    }).pipe(Effect.scoped))

  it.live("slots of an instance that died expire after slotTtlMs; a live instance keeps its slots by renewing them", () =>
    Effect.gen(function*() {
      // renewed every ttl / 3: the checks below hold while no renewal is late by more than about ttl / 3
      // (at 400 ms that was ~130 ms, which a loaded 2-core machine can stall a process or Redis for)
      const ttl = 1_500
      const dying = yield* Scope.make()
      const dead = yield* admissionIn(dying, "adm-dead", limits, ttl)
      const live = yield* admission("adm-live", limits, ttl)
      const survivor = yield* admission("adm-c", limits, ttl)
      yield* dead.admit(yield* ctx("u7"), "echo")
      yield* dead.admit(yield* ctx("u7"), "echo")
      yield* live.admit(yield* ctx("u8"), "echo")
      yield* live.admit(yield* ctx("u8"), "echo")
      // the dead instance stops renewing (its scope closed without releasing: a crash)
      yield* Scope.close(dying, Exit.void)
      const diedAt = Date.now()
      expect((yield* Effect.flip(survivor.admit(yield* ctx("u7"), "echo"))).reason).toBe("run_limit")
      // no event announces an expiry: retry the start until it is admitted
      let admitted = false
      while (!admitted) {
        admitted = yield* survivor.admit(yield* ctx("u7"), "echo").pipe(Effect.as(true), Effect.orElseSucceed(() => false))
        if (!admitted) yield* Effect.sleep("25 millis")
      }
      const waited = Date.now() - diedAt
      expect(waited).toBeGreaterThan(ttl / 3)
      expect(waited).toBeLessThan(ttl + 2000)
      // by now, more than a ttl after they were taken, the live instance's slots are still held
      yield* Effect.sleep(ttl)
      expect(yield* survivor.activeRuns("u8")).toBe(2)
      expect((yield* Effect.flip(survivor.admit(yield* ctx("u8"), "echo"))).reason).toBe("run_limit")
    }).pipe(Effect.scoped))

  it.live("the slots carry their owner: the runs hash names instance, thread and agent", () =>
    Effect.gen(function*() {
      const a = yield* admission("adm-owner")
      const context = yield* ctx("u9", undefined, "thread-9")
      yield* a.admit(context, "echo")
      const redis = yield* Effect.flatMap(Effect.scope, (scope) =>
        Effect.map(Layer.buildWithScope(instanceLayer("reader"), scope), (c) => Context.get(c, RedisInstance.RedisInstance)))
      const runs = yield* Effect.promise(() => redis.client.sendCommand(["HGETALL", RedisInstance.keys.userRuns("u9")]))
      expect(runs).toEqual({ [context.run_id]: "adm-owner\tthread-9\techo" })
    }).pipe(Effect.scoped))

  it.live("a start refused with server_busy while Redis is stalled (SIGSTOP) holds nothing once Redis answers: no slot, its request_id not remembered", () =>
    Effect.gen(function*() {
      const built = yield* Effect.flatMap(Effect.scope, (scope) =>
        Layer.buildWithScope(RunAdmissionRedis.layer(limits).pipe(Layer.provideMerge(instanceLayer("adm-stall"))), scope))
      const a = Context.get(built, RunAdmission)
      const instance = Context.get(built, RedisInstance.RedisInstance)
      const b = yield* admission("adm-stall-b")
      const idem = { idempotency: { fingerprint: "fp", threadGiven: false } }
      // a start before the stall: the admit script is loaded, so the stalled starts send it (EVALSHA) at once
      const warm = yield* a.admit(yield* ctx("u11-warm"), "echo")
      if (warm._tag === "Admitted") yield* warm.release
      const pid = server.current!.pid()!
      yield* Effect.addFinalizer(() => Effect.sync(() => process.kill(pid, "SIGCONT")))
      const starts = [yield* ctx("u11", "req-s1"), yield* ctx("u11", "req-s2")]
      process.kill(pid, "SIGSTOP")
      const refused = yield* Effect.forEach(starts, (c) => Effect.flip(a.admit(c, "echo", idem)), { concurrency: "unbounded" })
      process.kill(pid, "SIGCONT")
      expect(refused.map((e) => [e.reason, e.code])).toEqual([["server_busy", "SERVER_BUSY"], ["server_busy", "SERVER_BUSY"]])
      // one connection runs its commands in order: once this PING is answered, the stalled scripts (and
      // whatever undoes them) have run
      yield* Effect.promise(() => instance.client.sendCommand(["PING"]))
      // no slot held, cluster-wide
      expect(yield* b.activeRuns("u11")).toBe(0)
      expect(yield* a.activeRuns()).toBe(0)
      // the refused request_ids are not remembered: a retry is a new run (not a Duplicate of a run that never ran)
      const retried = yield* b.admit(yield* ctx("u11", "req-s1"), "echo", idem)
      expect(tagOf(retried)).toBe("Admitted")
      expect(yield* Effect.promise(() => instance.client.sendCommand(["EXISTS", RedisInstance.keys.userRequest("u11", "req-s2")]))).toBe(0)
      // and the user's whole limit (2) is theirs
      expect(tagOf(yield* b.admit(yield* ctx("u11"), "echo"))).toBe("Admitted")
    }).pipe(Effect.scoped), { timeout: 20_000 })

  it.live("an admit that reaches Redis after its undo (undoAdmit first) is refused and takes nothing", () =>
    Effect.gen(function*() {
      const built = yield* Effect.flatMap(Effect.scope, (scope) =>
        Layer.buildWithScope(RunAdmissionRedis.layer(limits).pipe(Layer.provideMerge(instanceLayer("adm-undo"))), scope))
      const a = Context.get(built, RunAdmission)
      const instance = Context.get(built, RedisInstance.RedisInstance)
      const idem = { idempotency: { fingerprint: "fp", threadGiven: false } }
      const late = yield* ctx("u12", "req-t")
      expect(yield* Effect.promise(() => RunAdmissionRedis.undoAdmit(instance.client, "u12", late.run_id, "req-t", 60_000))).toBe(0)
      const refused = yield* Effect.flip(a.admit(late, "echo", idem))
      expect(refused.reason).toBe("server_busy")
      expect([yield* a.activeRuns("u12"), yield* a.activeRuns()]).toEqual([0, 0])
      // its request_id was not recorded: a start with it is a new run
      expect(tagOf(yield* a.admit(yield* ctx("u12", "req-t"), "echo", idem))).toBe("Admitted")
      // an admitted start undone afterwards gives its slot and request_id back (the undo is idempotent)
      const taken = yield* ctx("u12", "req-u")
      expect(tagOf(yield* a.admit(taken, "echo", idem))).toBe("Admitted")
      expect(yield* a.activeRuns("u12")).toBe(2)
      for (let i = 0; i < 2; i++) yield* Effect.promise(() => RunAdmissionRedis.undoAdmit(instance.client, "u12", taken.run_id, "req-u", 60_000))
      expect(yield* a.activeRuns("u12")).toBe(1)
      expect(yield* Effect.promise(() => instance.client.sendCommand(["EXISTS", RedisInstance.keys.userRequest("u12", "req-u")]))).toBe(0)
    }).pipe(Effect.scoped))

  it.live("a renewal that reaches Redis after its run's admit was undone does not take the slot back (reviewer: after an outage, a renewal built while a stalled admit was pending was sent behind its script's load, after the undo, and held the slot a whole ttl)", () =>
    Effect.gen(function*() {
      const built = yield* Effect.flatMap(Effect.scope, (scope) =>
        Layer.buildWithScope(RunAdmissionRedis.layer(limits).pipe(Layer.provideMerge(instanceLayer("adm-renew"))), scope))
      const a = Context.get(built, RunAdmission)
      const instance = Context.get(built, RedisInstance.RedisInstance)
      const renew = (run: UserExecutionContext.UserExecutionContext) =>
        Effect.orDie(instance.redis.eval(RunAdmissionRedis.renewScript)("u13", 10_000, "adm-renew", [[run.run_id, run.thread_id, "echo"]]))
      const undone = yield* ctx("u13", "req-r")
      expect(tagOf(yield* a.admit(undone, "echo"))).toBe("Admitted")
      yield* Effect.promise(() => RunAdmissionRedis.undoAdmit(instance.client, "u13", undone.run_id, "req-r", 60_000))
      expect(yield* a.activeRuns("u13")).toBe(0)
      // the late renewal, built while that run was still held
      yield* renew(undone)
      expect(yield* a.activeRuns("u13")).toBe(0)
      // a run without a tombstone is renewed as before, its slot put back if it had lapsed
      const live = yield* ctx("u13")
      expect(tagOf(yield* a.admit(live, "echo"))).toBe("Admitted")
      yield* Effect.promise(() => instance.client.sendCommand(["ZREM", RedisInstance.keys.userSlots("u13"), live.run_id]))
      expect(yield* a.activeRuns("u13")).toBe(0)
      yield* renew(live)
      expect(yield* a.activeRuns("u13")).toBe(1)
    }).pipe(Effect.scoped))

  it.live("Redis down: a start is refused (at once once the loss is known, else within 2 s) with server_busy (no limit, retry in 1 s); it comes back after a restart", () =>
    Effect.gen(function*() {
      const a = yield* admission("adm-a")
      const redis = yield* Effect.flatMap(Effect.scope, (scope) =>
        Effect.map(Layer.buildWithScope(instanceLayer("probe"), scope), (c) => Context.get(c, RedisInstance.RedisInstance)))
      yield* Effect.promise(() => server.current!.kill())
      const refused = yield* Effect.flip(a.admit(yield* ctx("u10"), "echo"))
      expect([refused.reason, refused.limit, refused.retry_after_ms, refused.status]).toEqual(["server_busy", undefined, 1000, 503])
      expect(refused.message).toContain("retry")
      expect(yield* a.activeRuns()).toBe(0)
      yield* Effect.promise(() => server.current!.restart())
      yield* redis.whenReady
      let admitted = false
      while (!admitted) {
        admitted = yield* a.admit(yield* ctx("u10"), "echo").pipe(Effect.as(true), Effect.orElseSucceed(() => false))
        if (!admitted) yield* Effect.sleep("25 millis")
      }
      expect(yield* a.activeRuns("u10")).toBe(1)
    }).pipe(Effect.scoped), { timeout: 15_000 })
})
