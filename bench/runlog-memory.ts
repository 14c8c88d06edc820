/**
 * What the in-memory run log (`src/layers/RunLogMemory.ts`) holds in memory,
 * measured in one process: JS heap bytes per retained event, per finished run
 * and per tombstone, against what the log counts towards its byte budget
 * (`frame.length + EVENT_OVERHEAD_BYTES` per event); and the CPU of one append.
 *
 * Run: `npm exec -- node bench/runlog-memory.ts` (it restarts itself with
 * `--expose-gc` when started without). About 30 s.
 *
 * Events are stamped and encoded by the real run emitter (`layers/RunEmitter.ts`,
 * a bridge that drops them) and appended to a real `RunLogMemory`, so the
 * frames are the strings a server keeps: the same fields, field order, ids
 * (`run_<32 hex>`, `thread_<32 hex>`) and timestamps. Each figure is
 * `heapUsed` after two forced GCs, after the appends, minus the same before,
 * divided by what was added; the heap of a fresh log (and of one warm-up run
 * through the same code) is in "before".
 *
 * - **per retained event**, by kind: runs of 1,000 events of one kind
 *   (`agent_thinking` as the ticker sends it; `partial_result` with a 16- and
 *   a 400-character delta, the latter also with typographic quotes, which
 *   V8 then stores two bytes per character), so the run's own cost is
 *   spread over 1,000 events;
 * - **per finished run**: 5,000 runs shaped like the bench's paced run
 *   (`agent_started`, 40 × `agent_thinking`, `agent_completed`), over 100 users:
 *   events, run record, the index entries (`runs`, per-user set, end order);
 *   the "run's own" part is what remains after 42 events at the per-event
 *   cost measured for `agent_thinking`;
 * - **per tombstone**: a 1 MiB budget and runs of 3 events, so each new run
 *   evicts an old one into a tombstone; 80,000 more of them after the first
 *   20,000 (the retained part stays the size of the budget);
 * - **append CPU**: process CPU time of `appendSync` over the paced run shape
 *   with the events built beforehand (the stamp and encode are not in it),
 *   median of passes on fresh logs.
 *
 * @module
 */
import { spawnSync } from "node:child_process"
import { fileURLToPath } from "node:url"
import { Effect } from "effect"
import { DEFAULT_RUN_LOG_SETTINGS } from "../src/layers/AgentwireConfig.ts"
import * as RunEmitterLayer from "../src/layers/RunEmitter.ts"
import * as RunLogMemory from "../src/layers/RunLogMemory.ts"
import type { AgentEvent, AgentEventBody } from "../src/protocol/Protocol.ts"
import type { RunLog, RunLogSettings } from "../src/services/RunLog.ts"
import { generateId, type UserExecutionContext } from "../src/services/UserExecutionContext.ts"

const exposed = (globalThis as { gc?: () => void }).gc
if (exposed === undefined) {
  const child = spawnSync(process.execPath, ["--expose-gc", ...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: "inherit"
  })
  process.exit(child.status ?? 1)
}
const gc: () => void = exposed

const heapUsed = (): number => {
  gc()
  gc()
  return process.memoryUsage().heapUsed
}

type Log = RunLog["Service"]

/** What the log was given: events, and the bytes it counted for them. */
interface Counted {
  events: number
  frameChars: number
  countedBytes: number
}

/** The log, wrapped to count what it is given as the log counts it. */
const counting = (log: Log, counted: Counted): Log => ({
  ...log,
  appendSync: (event, frame) => {
    counted.events++
    counted.frameChars += frame.length
    counted.countedBytes += frame.length + RunLogMemory.EVENT_OVERHEAD_BYTES
    return log.appendSync!(event, frame)
  }
})

/** Runs `f` with a fresh in-memory log over `settings`, inside its scope. */
const withLog = <A>(settings: RunLogSettings, f: (log: Log) => A): A =>
  Effect.runSync(Effect.scoped(Effect.map(RunLogMemory.make(settings), f)))

const dropBridge = { emit: () => Effect.void, deliverSync: () => {} }

/** One run's events through the real emitter into `log`. */
const runInto = (log: Log, user_id: string, bodies: Iterable<AgentEventBody>): string => {
  const context: UserExecutionContext = Object.freeze({
    user_id,
    thread_id: generateId("thread"),
    run_id: generateId("run"),
    request_id: generateId("req")
  })
  const emitter = RunEmitterLayer.make(context, { log, bridge: dropBridge })
  for (const body of bodies) Effect.runSync(emitter.emit("ticker", 0, body))
  return context.run_id
}

const started = (request: string): AgentEventBody => ({ type: "agent_started", task_description: request, request_id: generateId("req") })
const completed = (final_response: string): AgentEventBody => ({
  type: "agent_completed",
  status: "completed",
  final_response,
  duration_ms: 203.417
})
const thinking = (step: number, steps: number): AgentEventBody => ({ type: "agent_thinking", reasoning: `tick ${step} of ${steps}`, step_number: step })

/** The paced bench's run: `agent_started`, `steps` × `agent_thinking`, `agent_completed`. */
function* tickerRun(steps: number): Generator<AgentEventBody> {
  yield started(`steps=${steps} interval_ms=5`)
  for (let step = 1; step <= steps; step++) yield thinking(step, steps)
  yield completed(`ticked ${steps} times`)
}

function* sameKindRun(events: number, body: (i: number) => AgentEventBody): Generator<AgentEventBody> {
  yield started("memory bench")
  for (let i = 1; i <= events; i++) yield body(i)
  yield completed("done")
}

const userOf = (i: number, users: number) => `user-${String(i % users).padStart(6, "0")}`

const ascii400 = "The quick brown fox jumps over the lazy dog; ".repeat(9).slice(0, 400)
const typographic400 = `“${ascii400.slice(2, 198)}” — ${ascii400.slice(200, 398)}`.slice(0, 400)

interface Row {
  readonly label: string
  readonly count: number
  readonly heapBytes: number
  readonly counted: Counted
}

const perEventRow = (label: string, body: (i: number) => AgentEventBody): Row => {
  const runs = 100
  const perRun = 1000
  const counted: Counted = { events: 0, frameChars: 0, countedBytes: 0 }
  return withLog(DEFAULT_RUN_LOG_SETTINGS, (raw) => {
    runInto(raw, "warm-up", sameKindRun(perRun, body))
    const log = counting(raw, counted)
    const before = heapUsed()
    for (let r = 0; r < runs; r++) runInto(log, userOf(r, 100), sameKindRun(perRun, body))
    const after = heapUsed()
    return { label, count: counted.events, heapBytes: after - before, counted }
  })
}

const perRunRow = (steps: number, runs: number): Row => {
  const counted: Counted = { events: 0, frameChars: 0, countedBytes: 0 }
  return withLog(DEFAULT_RUN_LOG_SETTINGS, (raw) => {
    runInto(raw, "warm-up", tickerRun(steps))
    const log = counting(raw, counted)
    const before = heapUsed()
    for (let r = 0; r < runs; r++) runInto(log, userOf(r, 100), tickerRun(steps))
    const after = heapUsed()
    return { label: `finished run (${steps + 2} events)`, count: runs, heapBytes: after - before, counted }
  })
}

const tombstoneRow = () => {
  const settings: RunLogSettings = { ...DEFAULT_RUN_LOG_SETTINGS, maxBytes: 1024 * 1024 }
  return withLog(settings, (log) => {
    // the run ids, in an array allocated up front so that its growth is not counted
    const ids: Array<string> = new Array<string>(100_000).fill("")
    let added = 0
    const add = (n: number) => {
      for (let i = 0; i < n; i++, added++) ids[added] = runInto(log, userOf(added, 100), tickerRun(1))
    }
    const isExpired = (i: number) =>
      Effect.runSync(Effect.match(log.summary(userOf(i, 100), ids[i]!), {
        onFailure: (error) => error._tag === "RunExpiredError",
        onSuccess: () => false
      }))
    const tombstones = () => {
      let n = 0
      for (let i = 0; i < added; i++) if (isExpired(i)) n++
      return n
    }
    add(20_000)
    const t1 = tombstones()
    const h1 = heapUsed()
    add(80_000)
    const h2 = heapUsed()
    const t2 = tombstones()
    return { tombstones: t2 - t1, heapBytes: h2 - h1, retained: added - t2 }
  })
}

/** Process CPU µs per `appendSync`, the events of `runs` paced-shaped runs built beforehand; median of `passes`. */
const appendCpu = (runs: number, passes: number) => {
  const steps = 40
  const prepared: Array<{ readonly event: AgentEvent; readonly frame: string }> = []
  withLog(DEFAULT_RUN_LOG_SETTINGS, (log) => {
    const capture: Log = {
      ...log,
      appendSync: (event, frame) => {
        prepared.push({ event, frame })
        return "ok"
      }
    }
    for (let r = 0; r < runs; r++) runInto(capture, userOf(r, 100), tickerRun(steps))
  })
  const samples: Array<number> = []
  for (let pass = 0; pass < passes; pass++) {
    samples.push(withLog(DEFAULT_RUN_LOG_SETTINGS, (log) => {
      const append = log.appendSync!
      gc()
      const t0 = process.cpuUsage()
      for (const { event, frame } of prepared) append(event, frame)
      const t = process.cpuUsage(t0)
      return (t.user + t.system) / prepared.length
    }))
  }
  samples.sort((a, b) => a - b)
  return { median: samples[Math.floor(samples.length / 2)]!, min: samples[0]!, max: samples[samples.length - 1]!, appends: prepared.length }
}

// ---------------------------------------------------------------------------

const f0 = (x: number) => x.toFixed(0)
const f1 = (x: number) => x.toFixed(1)
const out: Array<string> = []
const print = (line = "") => {
  out.push(line)
  process.stdout.write(`${line}\n`)
}

print(`Run log memory, ${new Date().toISOString()}, node ${process.version}; EVENT_OVERHEAD_BYTES = ${RunLogMemory.EVENT_OVERHEAD_BYTES}`)
print()
print("| Retained event | events | frame, chars | heap per event, B | counted per event, B | heap − frame chars, B | heap / counted |")
print("|---|---:|---:|---:|---:|---:|---:|")
const eventRows = [
  perEventRow("`agent_thinking` (ticker step)", (i) => thinking(i, 1000)),
  perEventRow("`partial_result`, 16-char delta", (i) => ({ type: "partial_result", message_id: "msg_0123456789abcdef0123456789abcdef", delta: `token ${String(i).padStart(4, "0")} text` })),
  perEventRow("`partial_result`, 400-char delta", () => ({ type: "partial_result", message_id: "msg_0123456789abcdef0123456789abcdef", delta: ascii400 })),
  perEventRow("`partial_result`, 400-char delta with “quotes” (two-byte string)", () => ({
    type: "partial_result",
    message_id: "msg_0123456789abcdef0123456789abcdef",
    delta: typographic400
  }))
]
for (const row of eventRows) {
  const heap = row.heapBytes / row.count
  const chars = row.counted.frameChars / row.counted.events
  const counted = row.counted.countedBytes / row.counted.events
  print(`| ${row.label} | ${row.count} | ${f0(chars)} | ${f1(heap)} | ${f1(counted)} | ${f1(heap - chars)} | ${(heap / counted).toFixed(2)} |`)
}
const thinkingOverhead = eventRows[0]!.heapBytes / eventRows[0]!.count - eventRows[0]!.counted.frameChars / eventRows[0]!.counted.events

print()
print("| Finished run | runs | heap per run, B | counted per run, B | heap / counted | run's own part, B |")
print("|---|---:|---:|---:|---:|---:|")
for (const steps of [40, 1]) {
  const row = perRunRow(steps, 5000)
  const heap = row.heapBytes / row.count
  const counted = row.counted.countedBytes / row.count
  const events = row.counted.events / row.count
  const own = heap - row.counted.frameChars / row.count - events * thinkingOverhead
  print(`| ${row.label} | ${row.count} | ${f0(heap)} | ${f0(counted)} | ${(heap / counted).toFixed(2)} | ${f0(own)} |`)
}

print()
const tomb = tombstoneRow()
print(`Tombstone: ${f0(tomb.heapBytes / tomb.tombstones)} B each (${tomb.tombstones} more tombstones, ${tomb.retained} runs retained under a 1 MiB budget)`)

const cpu = appendCpu(1000, 15)
print(`appendSync CPU (paced run shape, ${cpu.appends} appends per pass, fresh log each pass): median ${cpu.median.toFixed(3)} µs per append (${
  cpu.min.toFixed(3)
}–${cpu.max.toFixed(3)} over 15 passes)`)
