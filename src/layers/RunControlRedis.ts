/**
 * `RunControl` over Redis: stop a run on whichever instance executes it.
 *
 * Where runs execute comes from the shared admission slots
 * (`RunAdmissionRedis`: the user's `…:runs` HASH names each live slot's
 * instance and thread). Each instance listens on its control channel
 * `agentwire:instance:<id>:control` (on its one subscriber connection).
 *
 * `stopRemote` groups the selected runs by owner and, per owner, publishes
 * `{type: "stop", reply_to, reply_id, user_id, run_ids}` on the owner's
 * channel. The owner stops those runs of that user with its local stop (which
 * waits for their terminal events) and publishes
 * `{type: "stopped", reply_id, run_ids}` on the asker's channel. The owner
 * publishes the runs' events and the answer on its one command connection, and
 * the asker receives both on its one subscriber connection, so the terminal
 * events reach the asker's sockets before the answer: the stopper's
 * `run_stopped` comes after them, as on one instance. An owner that is gone
 * (no subscriber on its channel) contributes no run ids (its runs are the
 * orphan recovery's business). An owner that does not answer within
 * `stopTimeoutMs` (default: the instance lease + 2 s, by when a paused
 * owner's runs have been closed with `INSTANCE_LOST`) is looked at again:
 * the runs whose slots are gone meanwhile had ended (no ids); a run whose
 * slot still lives makes the stop fail with `RunControlUnavailableError`
 * (`SERVER_BUSY` for clients: it may still run). While this instance's Redis
 * connection is down, a stop that must reach other instances fails at once
 * with the same error, never a false "nothing to stop".
 *
 * Requires `RedisInstance`.
 *
 * @module
 */
import { Deferred, Effect, Layer, Option } from "effect"
import { Redis } from "effect/persistence"
import type { RunSelector } from "../services/ExecutionEngineFactory.ts"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import { type RemoteRun, RunControl, RunControlUnavailableError } from "../services/RunControl.ts"
import { DEFAULT_INSTANCE_LEASE_MS } from "./AgentwireConfig.ts"
import * as RedisInstance from "./RedisInstance.ts"

/** Default longest wait for another instance's answer to a stop, in ms: the default lease + 2 s. */
export const DEFAULT_STOP_TIMEOUT_MS = DEFAULT_INSTANCE_LEASE_MS + 2_000

/** Longest wait for Redis to list a user's runs, in ms. */
const LIST_TIMEOUT_MS = 2_000

/** `retry_after_ms` of a stop that could not reach the runs' instances. */
const STOP_RETRY_AFTER_MS = 1_000

/** KEYS: slots, runs. The user's live slots as flat (run_id, `instance \t thread \t agent`) pairs. */
const liveRunsScript = Redis.script((slots: string, runs: string) => [slots, runs], {
  numberOfKeys: 2,
  lua: `${RedisInstance.LUA_NOW_MS}
local now = now_ms()
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local out = {}
for i = 1, #live do
  local owner = redis.call('HGET', KEYS[2], live[i])
  if owner then
    out[#out + 1] = live[i]
    out[#out + 1] = owner
  end
end
return out`
}).withReturnType<ReadonlyArray<string>>()

type ControlMessage =
  | { readonly type: "stop"; readonly reply_to: string; readonly reply_id: string; readonly user_id: string; readonly run_ids: ReadonlyArray<string> }
  | { readonly type: "stopped"; readonly reply_id: string; readonly run_ids: ReadonlyArray<string> }

const isStrings = (u: unknown): u is ReadonlyArray<string> => Array.isArray(u) && u.every((s) => typeof s === "string")

const parse = (message: string): ControlMessage | undefined => {
  try {
    const m = JSON.parse(message) as Record<string, unknown>
    if (m.type === "stop" && typeof m.reply_to === "string" && typeof m.reply_id === "string" && typeof m.user_id === "string" && isStrings(m.run_ids)) {
      return m as ControlMessage
    }
    if (m.type === "stopped" && typeof m.reply_id === "string" && isStrings(m.run_ids)) return m as ControlMessage
  } catch {
    // not ours
  }
  return undefined
}

/** Options of the Redis run control. */
export interface RunControlRedisOptions {
  /** Longest wait for another instance's answer to a stop, in ms (default `DEFAULT_STOP_TIMEOUT_MS`). */
  readonly stopTimeoutMs?: number | undefined
}

/** Builds the Redis run control over this instance's `RedisInstance`. */
export const make = (options?: RunControlRedisOptions) =>
  Effect.gen(function*() {
    const instance = yield* RedisInstance.RedisInstance
    // about the lease: by then a paused owner's runs have been closed (INSTANCE_LOST) by another instance
    const leaseMs = Option.match(yield* Effect.serviceOption(AgentwireConfig), { onNone: () => DEFAULT_INSTANCE_LEASE_MS, onSome: (c) => c.instanceLeaseMs })
    const stopTimeoutMs = options?.stopTimeoutMs ?? leaseMs + 2_000
    const self = instance.instance_id
    const pending = new Map<string, Deferred.Deferred<ReadonlyArray<string>>>()
    let stopLocal: ((selector: RunSelector) => Effect.Effect<ReadonlyArray<string>>) | undefined
    const runFork = Effect.runForkWith(yield* Effect.context<never>())

    const answer = (request: Extract<ControlMessage, { type: "stop" }>) =>
      Effect.gen(function*() {
        const stop = stopLocal
        const stopped = stop === undefined
          ? []
          : (yield* Effect.forEach(request.run_ids, (run_id) => stop({ user_id: request.user_id, run_id }), { concurrency: "unbounded" })).flat()
        instance.publish(RedisInstance.keys.instanceControl(request.reply_to), JSON.stringify({ type: "stopped", reply_id: request.reply_id, run_ids: stopped }))
      }).pipe(Effect.annotateLogs({ user_id: request.user_id, from_instance: request.reply_to }))

    const onMessage = (message: string) => {
      const m = parse(message)
      if (m === undefined) return
      if (m.type === "stop") {
        runFork(answer(m))
        return
      }
      const waiting = pending.get(m.reply_id)
      if (waiting !== undefined) Deferred.doneUnsafe(waiting, Effect.succeed(m.run_ids))
    }
    yield* instance.subscribe(RedisInstance.keys.instanceControl(self), onMessage)

    const unavailable = (message: string) => new RunControlUnavailableError({ message, retry_after_ms: STOP_RETRY_AFTER_MS })

    /** The user's live runs on other instances; fails at once while Redis is unreachable. */
    const liveRemoteRuns = (user_id: string): Effect.Effect<ReadonlyArray<RemoteRun>, RunControlUnavailableError> =>
      Effect.suspend(() =>
        !instance.isReady()
          ? Effect.fail(unavailable("Redis cannot be reached: runs on other instances cannot be stopped now"))
          : instance.redis.eval(liveRunsScript)(RedisInstance.keys.userSlots(user_id), RedisInstance.keys.userRuns(user_id)).pipe(
            Effect.map((flat) => {
              const out: Array<RemoteRun> = []
              for (let i = 0; i + 1 < flat.length; i += 2) {
                const [instance_id = "", thread_id = "", agent_name = ""] = flat[i + 1]!.split("\t")
                if (instance_id !== self) out.push({ run_id: flat[i]!, thread_id, agent_name, instance_id })
              }
              return out
            }),
            Effect.timeout(LIST_TIMEOUT_MS),
            Effect.catchCause((cause) =>
              Effect.andThen(
                Effect.logWarning("could not list the user's runs in Redis", cause),
                Effect.fail(unavailable("Redis did not answer: runs on other instances cannot be stopped now"))
              )
            )
          )
      )

    const remoteRuns = (user_id: string): Effect.Effect<ReadonlyArray<RemoteRun>> =>
      liveRemoteRuns(user_id).pipe(Effect.orElseSucceed((): ReadonlyArray<RemoteRun> => []))

    const askOwner = (owner: string, user_id: string, run_ids: ReadonlyArray<string>) =>
      Effect.suspend(() => {
        const reply_id = crypto.randomUUID()
        const reply = Deferred.makeUnsafe<ReadonlyArray<string>>()
        pending.set(reply_id, reply)
        const request = JSON.stringify({ type: "stop", reply_to: self, reply_id, user_id, run_ids })
        return instance.redis.send<number>("PUBLISH", RedisInstance.keys.instanceControl(owner), request).pipe(
          Effect.timeout(LIST_TIMEOUT_MS),
          Effect.mapError(() => unavailable("Redis did not take the stop request: runs on other instances cannot be stopped now")),
          // nobody listens on the owner's channel: that instance is gone
          Effect.flatMap((receivers) =>
            receivers === 0 ? Effect.succeed<ReadonlyArray<string>>([]) : Deferred.await(reply).pipe(
              Effect.timeoutOption(stopTimeoutMs),
              Effect.flatMap(Option.match({
                onSome: Effect.succeed,
                // no answer: runs whose slots are gone meanwhile ended (a paused owner's are closed with
                // INSTANCE_LOST about a lease after it stopped renewing); one still live may still run
                onNone: () =>
                  Effect.flatMap(liveRemoteRuns(user_id), (live) =>
                    live.some((run) => run.instance_id === owner && run_ids.includes(run.run_id))
                      ? Effect.andThen(
                        Effect.logWarning("another instance did not answer a stop").pipe(Effect.annotateLogs({ owner, user_id })),
                        Effect.fail(unavailable(`the instance running the run did not answer within ${stopTimeoutMs} ms; it may still run`))
                      )
                      : Effect.succeed<ReadonlyArray<string>>([]))
              }))
            )
          ),
          Effect.ensuring(Effect.sync(() => pending.delete(reply_id)))
        )
      })

    const stopRemote = (selector: RunSelector) =>
      Effect.gen(function*() {
        const selected = (yield* liveRemoteRuns(selector.user_id)).filter((run) =>
          (selector.run_id === undefined || run.run_id === selector.run_id) &&
          (selector.thread_id === undefined || run.thread_id === selector.thread_id)
        )
        if (selected.length === 0) return []
        const byOwner = new Map<string, Array<string>>()
        for (const run of selected) byOwner.set(run.instance_id, [...(byOwner.get(run.instance_id) ?? []), run.run_id])
        const answers = yield* Effect.forEach(byOwner, ([owner, run_ids]) => askOwner(owner, selector.user_id, run_ids), { concurrency: "unbounded" })
        return answers.flat()
      })

    return RunControl.of({
      remoteRuns: Effect.fn("RunControl.remoteRuns")(remoteRuns),
      stopRemote: Effect.fn("RunControl.stopRemote")(stopRemote),
      serve: (handler) =>
        Effect.acquireRelease(
          Effect.sync(() => {
            stopLocal = handler
          }),
          () => Effect.sync(() => {
            if (stopLocal === handler) stopLocal = undefined
          })
        )
    })
  })

/** The Redis run control; requires `RedisInstance`. */
export const layer = (options?: RunControlRedisOptions): Layer.Layer<RunControl, never, RedisInstance.RedisInstance> =>
  Layer.effect(RunControl, make(options))
