/**
 * In-memory `RunLog` for one process.
 *
 * Each run keeps its frames (the JSON text already sent to sockets) in an
 * array indexed by `seq - 1`; a run's summary is derived from its events (the
 * first depth-0 event names the agent, the root `agent_completed` ends it).
 * Finished runs are kept in end order: they expire `retentionMs` after their
 * end, and when the byte budget (or the user's share) is spent the oldest
 * finished run is evicted first, never the run whose append it is. Either way the run leaves a tombstone (run, user, last seq) for
 * `tombstoneMs`, at most `MAX_TOMBSTONES` of them, oldest dropped first.
 *
 * Bytes are counted as each frame's heap size (`frameBytes`) plus
 * `EVENT_OVERHEAD_BYTES` per event and `RUN_OVERHEAD_BYTES` per run; the
 * figures are measured by `bench/runlog-memory.ts`. Time comes from the Effect `Clock`, so tests drive
 * retention with `TestClock`; a sweep every `SWEEP_INTERVAL_MS` frees expired
 * runs, and every read checks expiry itself.
 *
 * @module
 */
import { Clock, Effect, Layer, Option } from "effect"
import type { AgentEvent } from "../protocol/Protocol.ts"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import * as RunLogContract from "../services/RunLog.ts"
import {
  AfterSeqError,
  type AppendResult,
  type ListOptions,
  type LoggedEvent,
  MAX_LIST_RUNS,
  MAX_LIST_SCAN,
  RunExpiredError,
  RunLog,
  type RunLogSettings,
  RunNotFoundError,
  type RunStatus,
  type RunSummary
} from "../services/RunLog.ts"
import { generateId } from "../services/UserExecutionContext.ts"
import { utf8Length } from "../protocol/FrameBytes.ts"
import { DEFAULT_RUN_LOG_SETTINGS } from "./AgentwireConfig.ts"

/**
 * Bytes counted per logged event beyond its frame's text (string header, two
 * array slots and their growth slack).
 *
 * Measured (`bench/runlog-memory.ts`, Node 24, 2026-11-30): a retained event
 * costs its frame's length + 39–43 B of heap when the frame is one-byte text.
 * A frame with any character past U+00FF (“quotes”, —, emoji, most non-Latin
 * scripts) is stored two bytes per character, and is counted so (`frameBytes`).
 */
export const EVENT_OVERHEAD_BYTES = 48

/** Bytes counted per retained run beyond its events (record, index entries): measured 450–770 B. */
export const RUN_OVERHEAD_BYTES = 800

const TWO_BYTE = /[^\u0000-\u00ff]/

/**
 * Heap bytes of a frame's text: V8 keeps a string one byte per character unless one is past U+00FF.
 * A frame whose UTF-8 length is its length is ASCII: that length, with no scan of its own (the
 * sockets need the UTF-8 length too, and `utf8Length` computes it once per frame).
 */
export const frameBytes = (frame: string): number => {
  const length = frame.length
  if (utf8Length(frame) === length) return length
  return TWO_BYTE.test(frame) ? 2 * length : length
}

/** Tombstones kept at most (about 190 bytes of heap each, measured; not counted in the byte budget), oldest dropped first. */
export const MAX_TOMBSTONES = 100_000

/**
 * A finished run read within this long is kept past its retention, and evicted
 * last under the byte budget: a replay that started within the window finishes.
 */
export const REPLAY_GRACE_MS = 30_000

/** How often expired runs are freed, in milliseconds (reads check expiry themselves). */
export const SWEEP_INTERVAL_MS = 1000

/** Events kept beyond the soft cap so that a run stopped there can still log its terminal events (see `RunLog`). */
export const terminalReserve = RunLogContract.terminalReserve

/** A user's runs (insertion order = start order, newest last) and their bytes, against the user's share of the budget. */
interface UserRecord {
  readonly runs: Set<string>
  bytes: number
}

interface RunRecord {
  readonly run_id: string
  readonly user_id: string
  /** The user's record while the run is retained: its appends count against the share without a lookup. */
  readonly user: UserRecord
  readonly thread_id: string
  agent_name: string
  readonly started_at: string
  status: RunStatus
  ended_at: string | undefined
  /** When the run ended by the log's clock (retention counts from here). */
  endedAtMs: number
  /** When the run was last read (a replay in progress keeps it `REPLAY_GRACE_MS` past each read). */
  lastReadAtMs: number
  readonly frames: Array<string>
  readonly types: Array<AgentEvent["type"]>
  bytes: number
  waiters: Array<() => void> | undefined
}

interface Tombstone {
  readonly user_id: string
  readonly thread_id: string
  readonly last_seq: number
  readonly expiresAt: number
}

const summaryOf = (run: RunRecord): RunSummary => ({
  run_id: run.run_id,
  thread_id: run.thread_id,
  user_id: run.user_id,
  agent_name: run.agent_name,
  status: run.status,
  started_at: run.started_at,
  ...(run.ended_at === undefined ? {} : { ended_at: run.ended_at }),
  last_seq: run.frames.length
})

/** Builds the in-memory log over `settings`; the sweep runs in the surrounding scope. */
export const make = (settings: RunLogSettings) =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    const epoch = generateId("epoch")
    const softCap = settings.maxEventsPerRun - terminalReserve(settings.maxEventsPerRun)
    const runs = new Map<string, RunRecord>()
    const byUser = new Map<string, UserRecord>()
    // insertion order = end order: the first entries expire (and are evicted) first
    const ended = new Set<string>()
    const tombstones = new Map<string, Tombstone>()
    let totalBytes = 0
    // the run appended to last: a run's events mostly come in a row (a burst), then no lookup is needed
    let lastRun: RunRecord | undefined
    const beingRead = (run: RunRecord, now: number) => run.lastReadAtMs + REPLAY_GRACE_MS > now
    const expired = (run: RunRecord, now: number) =>
      run.status !== "running" && run.endedAtMs + settings.retentionMs <= now && !beingRead(run, now)
    let evicted = 0

    const wake = (run: RunRecord) => {
      const waiters = run.waiters
      if (waiters === undefined) return
      run.waiters = undefined
      for (const w of waiters) w()
    }

    const forget = (run: RunRecord, now: number) => {
      runs.delete(run.run_id)
      if (lastRun === run) lastRun = undefined
      ended.delete(run.run_id)
      const mine = run.user
      mine.runs.delete(run.run_id)
      mine.bytes -= run.bytes
      if (mine.runs.size === 0 && byUser.get(run.user_id) === mine) byUser.delete(run.user_id)
      totalBytes -= run.bytes
      tombstones.set(run.run_id, { user_id: run.user_id, thread_id: run.thread_id, last_seq: run.frames.length, expiresAt: now + settings.tombstoneMs })
      if (tombstones.size > MAX_TOMBSTONES) tombstones.delete(tombstones.keys().next().value!)
      wake(run)
    }

    const sweep = (now: number) => {
      for (const run_id of ended) {
        const run = runs.get(run_id)!
        if (run.endedAtMs + settings.retentionMs > now) break
        // a run being replayed stays until its reader is done
        if (!beingRead(run, now)) forget(run, now)
      }
      for (const [run_id, tomb] of tombstones) {
        if (tomb.expiresAt > now) break
        tombstones.delete(run_id)
      }
    }

    const end = (run: RunRecord, status: RunStatus, ended_at: string) => {
      run.status = status
      run.ended_at = ended_at
      run.endedAtMs = clock.currentTimeMillisUnsafe()
      ended.add(run.run_id)
      wake(run)
    }

    const appendSync = (event: AgentEvent, frame: string): AppendResult => {
      let run = lastRun !== undefined && lastRun.run_id === event.run_id ? lastRun : runs.get(event.run_id)
      if (run !== undefined && event.seq === 1 && run.frames.length > 0) {
        // a run id used again (embedders choosing their own): the new run replaces the old
        forget(run, clock.currentTimeMillisUnsafe())
        run = undefined
      }
      if (run === undefined) {
        let user = byUser.get(event.user_id)
        if (user === undefined) byUser.set(event.user_id, user = { runs: new Set(), bytes: 0 })
        run = {
          run_id: event.run_id,
          user_id: event.user_id,
          user,
          thread_id: event.thread_id,
          agent_name: event.depth === 0 ? event.agent_name : "",
          started_at: event.timestamp,
          status: "running",
          ended_at: undefined,
          endedAtMs: 0,
          lastReadAtMs: Number.NEGATIVE_INFINITY,
          frames: [],
          types: [],
          bytes: RUN_OVERHEAD_BYTES,
          waiters: undefined
        }
        runs.set(run.run_id, run)
        totalBytes += RUN_OVERHEAD_BYTES
        user.bytes += RUN_OVERHEAD_BYTES
        tombstones.delete(run.run_id)
        user.runs.add(run.run_id)
      }
      lastRun = run
      if (run.frames.length >= settings.maxEventsPerRun) return "refused"
      if (run.status !== "running") {
        // more root runs on one context (embedders running an engine twice): the run is open again
        ended.delete(run.run_id)
        run.status = "running"
        run.ended_at = undefined
      }
      if (run.agent_name === "" && event.depth === 0) run.agent_name = event.agent_name
      const bytes = frameBytes(frame) + EVENT_OVERHEAD_BYTES
      run.frames.push(frame)
      run.types.push(event.type)
      run.bytes += bytes
      totalBytes += bytes
      const user = run.user
      user.bytes += bytes
      if (event.type === "agent_completed" && event.depth === 0) end(run, event.status, event.timestamp)
      else wake(run)
      // the budget: the oldest finished runs go first; active runs alone over it must end
      // a user over their share loses their own oldest finished runs first: one busy user cannot
      // push everyone else's runs out of retention
      // neither eviction takes this run: a run is not evicted by its own events (one that ended over
      // the share, by its terminal events or as a LOG_FULL failure, stays until another run needs the room)
      if (user.bytes > settings.maxBytesPerUser) {
        const now = clock.currentTimeMillisUnsafe()
        for (const pass of [false, true]) {
          for (const run_id of user.runs) {
            if (user.bytes <= settings.maxBytesPerUser) break
            const other = runs.get(run_id)!
            if (other === run || other.status === "running" || (!pass && beingRead(other, now))) continue
            forget(other, now)
            evicted++
          }
        }
        if (user.bytes > settings.maxBytesPerUser && run.status === "running") return "log_full"
      }
      // the whole budget: the oldest finished runs go first, those being replayed last
      if (totalBytes > settings.maxBytes) {
        const now = clock.currentTimeMillisUnsafe()
        for (const pass of [false, true]) {
          for (const run_id of ended) {
            if (totalBytes <= settings.maxBytes) break
            const other = runs.get(run_id)!
            if (other === run || (!pass && beingRead(other, now))) continue
            forget(other, now)
            evicted++
          }
        }
        if (totalBytes > settings.maxBytes && run.status === "running") return "log_full"
      }
      return run.frames.length > softCap && run.status === "running" ? "event_limit" : "ok"
    }

    /** The user's run, or why it cannot be read (expired runs are forgotten here too). */
    const find = (user_id: string, run_id: string): RunRecord | RunNotFoundError | RunExpiredError => {
      const now = clock.currentTimeMillisUnsafe()
      const run = runs.get(run_id)
      if (run !== undefined && expired(run, now)) forget(run, now)
      const live = runs.get(run_id)
      if (live !== undefined) return live.user_id === user_id ? live : new RunNotFoundError({ run_id })
      const tomb = tombstones.get(run_id)
      if (tomb !== undefined && tomb.user_id === user_id && tomb.expiresAt > now) {
        return new RunExpiredError({ run_id, last_seq: tomb.last_seq })
      }
      return new RunNotFoundError({ run_id })
    }

    const found = (user_id: string, run_id: string) =>
      Effect.suspend(() => {
        const run = find(user_id, run_id)
        return run instanceof RunNotFoundError || run instanceof RunExpiredError ? Effect.fail(run) : Effect.succeed(run)
      })

    const list = (user_id: string, options?: ListOptions): ReadonlyArray<RunSummary> => {
      sweep(clock.currentTimeMillisUnsafe())
      const mine = byUser.get(user_id)?.runs
      if (mine === undefined) return []
      const limit = Math.max(1, Math.min(options?.limit ?? MAX_LIST_RUNS, MAX_LIST_RUNS))
      const ids = Array.from(mine)
      const out: Array<RunSummary> = []
      // the MAX_LIST_SCAN newest at most, as on Redis
      for (let i = ids.length - 1; i >= Math.max(0, ids.length - MAX_LIST_SCAN) && out.length < limit; i--) {
        const run = runs.get(ids[i]!)!
        if (options?.thread_id !== undefined && run.thread_id !== options.thread_id) continue
        if (options?.status !== undefined && run.status !== options.status) continue
        out.push(summaryOf(run))
      }
      return out
    }

    yield* Effect.forkScoped(
      Effect.forever(Effect.andThen(Effect.sleep(SWEEP_INTERVAL_MS), Effect.sync(() => sweep(clock.currentTimeMillisUnsafe()))))
    )


    /** Ended runs and tombstones of the user (of one thread when `thread_id` is given) go without a trace; a run still running keeps its log. */
    const erase = (user_id: string, thread_id: string | undefined): number => {
      let erased = 0
      for (const run_id of Array.from(byUser.get(user_id)?.runs ?? [])) {
        const run = runs.get(run_id)!
        if (run.status === "running" || (thread_id !== undefined && run.thread_id !== thread_id)) continue
        forget(run, 0)
        tombstones.delete(run_id)
        erased++
      }
      for (const [run_id, tomb] of Array.from(tombstones)) {
        if (tomb.user_id === user_id && (thread_id === undefined || tomb.thread_id === thread_id)) tombstones.delete(run_id)
      }
      return erased
    }
    return RunLog.of({
      epoch,
      settings,
      append: (event, frame) => Effect.sync(() => appendSync(event, frame)),
      appendSync,
      release: (run_id) =>
        Effect.sync(() => {
          const run = runs.get(run_id)
          if (run !== undefined && run.status === "running") end(run, "cancelled", new Date(clock.currentTimeMillisUnsafe()).toISOString())
        }),
      summary: Effect.fn("RunLog.summary")((user_id: string, run_id: string) => Effect.map(found(user_id, run_id), summaryOf)),
      list: Effect.fn("RunLog.list")((user_id: string, options?: ListOptions) => Effect.sync(() => list(user_id, options))),
      stats: Effect.sync(() => ({
        runs: runs.size,
        activeRuns: runs.size - ended.size,
        bytes: totalBytes,
        maxBytes: settings.maxBytes,
        tombstones: tombstones.size,
        evicted
      })),
      eraseUser: (user_id) => Effect.sync(() => erase(user_id, undefined)),
      eraseThread: (user_id, thread_id) => Effect.sync(() => erase(user_id, thread_id)),
      read: (user_id, run_id, after_seq, limits) =>
        Effect.flatMap(found(user_id, run_id), (run) => {
          run.lastReadAtMs = clock.currentTimeMillisUnsafe()
          const last = run.frames.length
          if (after_seq > last) return Effect.fail(new AfterSeqError({ after_seq, last_seq: last }))
          const events: Array<LoggedEvent> = []
          let bytes = 0
          for (let i = Math.max(0, after_seq); i < last && events.length < limits.maxEvents; i++) {
            const frame = run.frames[i]!
            if (events.length > 0 && bytes + frame.length > limits.maxBytes) break
            bytes += frame.length
            events.push({ seq: i + 1, type: run.types[i]!, frame })
          }
          return Effect.succeed({ events, summary: summaryOf(run) })
        }),
      waitFor: (user_id, run_id, after_seq) =>
        Effect.flatMap(found(user_id, run_id), (run) => {
          if (run.frames.length > after_seq || run.status !== "running") return Effect.void
          return Effect.callback<void, RunNotFoundError | RunExpiredError>((resume) => {
            const waiter = () => resume(Effect.asVoid(found(user_id, run_id)))
            ;(run.waiters ??= []).push(waiter)
            return Effect.sync(() => {
              const i = run.waiters?.indexOf(waiter) ?? -1
              if (i >= 0) run.waiters!.splice(i, 1)
            })
          })
        })
    })
  })

/** The in-memory log over `settings`. */
export const layer = (settings: RunLogSettings): Layer.Layer<RunLog> => Layer.effect(RunLog, make(settings))

/** The in-memory log with the retention settings of `AgentwireConfig` when one is provided, else the defaults. */
export const layerConfig: Layer.Layer<RunLog> = Layer.effect(
  RunLog,
  Effect.flatMap(Effect.serviceOption(AgentwireConfig), (config) =>
    make(Option.match(config, { onNone: () => DEFAULT_RUN_LOG_SETTINGS, onSome: (c) => c.runLog })))
)
