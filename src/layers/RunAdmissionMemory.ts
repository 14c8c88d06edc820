/**
 * In-memory `RunAdmission` for one process.
 *
 * Counts slots per user and in total, remembers client `request_id`s for the
 * idempotency window (at most `MAX_REMEMBERED_REQUESTS`, oldest forgotten
 * first), and keeps one token bucket per user who started recently (full
 * buckets are forgotten). Every check and update is synchronous, so two starts
 * with the same `request_id` on two tabs cannot both be admitted.
 *
 * @module
 */
import { Clock, Effect, Layer, Option } from "effect"
import { DEFAULT_RUN_LIMITS } from "./AgentwireConfig.ts"
import * as TokenBucket from "./TokenBucket.ts"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import { type Admission, AdmissionError, type AdmitOptions, type AdmittedRun, RunAdmission, type RunLimits } from "../services/RunAdmission.ts"

/** Client request ids remembered at most (about 300 bytes each: ids and a SHA-256 fingerprint). */
export const MAX_REMEMBERED_REQUESTS = 100_000

/** Token buckets kept at most before full ones are swept. */
const MAX_BUCKETS = 100_000

interface Remembered {
  readonly run: AdmittedRun
  readonly fingerprint: string
  readonly expiresAt: number
}

/** Builds the in-memory admission over `limits`. */
export const make = (limits: RunLimits) =>
  Effect.sync(() => {
    let open = true
    let total = 0
    const perUser = new Map<string, number>()
    // insertion order = age: the first entries expire (or are evicted) first
    const requests = new Map<string, Remembered>()
    const buckets = new Map<string, TokenBucket.TokenBucket>()

    const forgetExpired = (now: number) => {
      for (const [key, entry] of requests) {
        if (entry.expiresAt > now && requests.size <= MAX_REMEMBERED_REQUESTS) break
        requests.delete(key)
      }
    }

    const admit = (now: number, context: Parameters<RunAdmission["Service"]["admit"]>[0], agent_name: string, options: AdmitOptions | undefined): Admission => {
      if (!open) throw new AdmissionError({ reason: "shutting_down" })
      const fingerprint = options?.idempotency?.fingerprint
      const key = `${context.user_id}\u0000${context.request_id}`
      if (fingerprint !== undefined) {
        forgetExpired(now)
        const seen = requests.get(key)
        if (seen !== undefined && seen.expiresAt > now) {
          const sameThread = options?.idempotency?.threadGiven !== true || context.thread_id === seen.run.thread_id
          if (seen.fingerprint !== fingerprint || !sameThread) throw new AdmissionError({ reason: "request_id_conflict" })
          return { _tag: "Duplicate", run: seen.run }
        }
      }
      const mine = perUser.get(context.user_id) ?? 0
      if (mine >= limits.maxRunsPerUser) throw new AdmissionError({ reason: "run_limit", limit: limits.maxRunsPerUser })
      if (total >= limits.maxRuns) throw new AdmissionError({ reason: "server_busy", limit: limits.maxRuns, retry_after_ms: 1000 })
      // the budget is spent last: a refused start costs nothing
      if (options?.rateLimited === true) takeStart(now, context.user_id)
      perUser.set(context.user_id, mine + 1)
      total++
      if (fingerprint !== undefined) {
        const run = { run_id: context.run_id, thread_id: context.thread_id, request_id: context.request_id, agent_name }
        requests.set(key, { run, fingerprint, expiresAt: now + limits.idempotencyWindowMs })
      }
      let released = false
      return {
        _tag: "Admitted",
        release: Effect.sync(() => {
          if (released) return
          released = true
          total--
          const left = (perUser.get(context.user_id) ?? 1) - 1
          if (left <= 0) perUser.delete(context.user_id)
          else perUser.set(context.user_id, left)
        })
      }
    }

    const takeStart = (now: number, user_id: string) => {
      if (limits.runStartsPerSecond <= 0) return
      let bucket = buckets.get(user_id)
      if (bucket === undefined) {
        bucket = TokenBucket.make(limits.runStartsPerSecond, limits.runStartBurst, now)
        buckets.set(user_id, bucket)
      }
      const retry_after_ms = bucket.take(now)
      if (retry_after_ms > 0) throw new AdmissionError({ reason: "rate_limited", retry_after_ms })
      if (buckets.size > MAX_BUCKETS) {
        // a bucket that refilled completely carries no state worth keeping
        for (const [user, b] of buckets) if (b.isFull(now)) buckets.delete(user)
      }
    }

    // the time comes from the Effect clock, so tests can drive windows and buckets with TestClock
    const attempt = <A>(f: (now: number) => A): Effect.Effect<A, AdmissionError> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        try {
          return Effect.succeed(f(now))
        } catch (error) {
          if (error instanceof AdmissionError) return Effect.fail(error)
          throw error
        }
      })

    return RunAdmission.of({
      limits,
      admit: (context, agent_name, options) => attempt((now) => admit(now, context, agent_name, options)),
      close: Effect.sync(() => {
        open = false
      }),
      isOpen: Effect.sync(() => open),
      activeRuns: (user_id) => Effect.sync(() => (user_id === undefined ? total : (perUser.get(user_id) ?? 0))),
      forgetUser: (user_id) =>
        Effect.sync(() => {
          const prefix = `${user_id}\u0000`
          for (const key of Array.from(requests.keys())) if (key.startsWith(prefix)) requests.delete(key)
          buckets.delete(user_id)
        })
    })
  })

/** In-memory admission with explicit limits. */
export const layer = (limits: RunLimits): Layer.Layer<RunAdmission> => Layer.effect(RunAdmission, make(limits))

/** In-memory admission with the limits of `AgentwireConfig` when one is provided, else the defaults. */
export const layerConfig: Layer.Layer<RunAdmission> = Layer.effect(
  RunAdmission,
  Effect.flatMap(Effect.serviceOption(AgentwireConfig), (config) =>
    make(Option.match(config, { onNone: () => DEFAULT_RUN_LIMITS, onSome: (c) => c.runLimits })))
)
