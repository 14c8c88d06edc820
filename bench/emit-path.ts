/**
 * The emit path in process, old against new: what one event costs from the
 * run emitter to the sockets' write path, with the in-memory run log and
 * bridge and no network. Alternates rounds of two source trees (this
 * worktree's `src/` and the `src/` of a git revision, extracted to a temp
 * directory) in one process and prints process CPU per delivered event,
 * medians and spread.
 *
 * Each round: a fresh log (default settings) and bridge, `users` users with
 * `sockets` fake connections each, then `runs` burst-shaped runs (agent_started,
 * `steps` agent_thinking, agent_completed) emitted one run after another.
 * A fake connection does what the server's connection does per live event
 * (`Conn.send`: per-run tracking by `run_id`, dedupe by `seq` with `SentSeqs`),
 * then hands the frame to the tree's `SocketOutput` over a `ws` stand-in whose
 * `send` drops the frame (cork/uncork are no-ops).
 *
 * `npm exec -- node --expose-gc bench/emit-path.ts [rev=HEAD] [rounds=15] [runs=250] [steps=200] [users=250] [sockets=4]`
 *
 * @module
 */
import { execSync } from "node:child_process"
import { existsSync, mkdirSync, symlinkSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { Effect, Exit, Scope } from "effect"

const here = dirname(fileURLToPath(import.meta.url))
const root = resolve(here, "..")
const [rev = "HEAD", roundsArg = "15", runsArg = "250", stepsArg = "200", usersArg = "250", socketsArg = "4"] = process.argv.slice(2)
const rounds = Number(roundsArg)
const runs = Number(runsArg)
const steps = Number(stepsArg)
const users = Number(usersArg)
const sockets = Number(socketsArg)

const sha = execSync(`git rev-parse ${rev}`, { cwd: root }).toString().trim()
const oldRoot = `/tmp/emit-path-${sha.slice(0, 12)}`
if (!existsSync(join(oldRoot, "src"))) {
  mkdirSync(oldRoot, { recursive: true })
  execSync(`git archive ${sha} src package.json | tar -x -C ${oldRoot}`, { cwd: root })
  symlinkSync(join(root, "node_modules"), join(oldRoot, "node_modules"))
}

interface Tree {
  readonly name: string
  readonly RunEmitter: typeof import("../src/layers/RunEmitter.ts")
  readonly RunLogMemory: typeof import("../src/layers/RunLogMemory.ts")
  readonly Bridge: typeof import("../src/layers/WebSocketBridgeMemory.ts")
  readonly SentSeqs: typeof import("../src/server/SentSeqs.ts")
  readonly SocketOutput: typeof import("../src/server/SocketOutput.ts")
  readonly settings: typeof import("../src/layers/AgentwireConfig.ts")["DEFAULT_RUN_LOG_SETTINGS"]
}

const load = async (name: string, dir: string): Promise<Tree> => ({
  name,
  RunEmitter: await import(join(dir, "src/layers/RunEmitter.ts")),
  RunLogMemory: await import(join(dir, "src/layers/RunLogMemory.ts")),
  Bridge: await import(join(dir, "src/layers/WebSocketBridgeMemory.ts")),
  SentSeqs: await import(join(dir, "src/server/SentSeqs.ts")),
  SocketOutput: await import(join(dir, "src/server/SocketOutput.ts")),
  settings: (await import(join(dir, "src/layers/AgentwireConfig.ts"))).DEFAULT_RUN_LOG_SETTINGS
})

const trees = [await load(`old (${rev} ${sha.slice(0, 8)})`, oldRoot), await load("new (worktree)", root)]

const ws = { readyState: 1, bufferedAmount: 0, send: (_frame: string) => {}, close: () => {}, terminate: () => {} }
const socket = { cork: () => {}, uncork: () => {}, writableLength: 0, once: () => {}, off: () => {} }

interface SentLike {
  has(seq: number): boolean
  add(seq: number): void
  claim?: (seq: number) => boolean
}

/** One round of `tree`: process CPU µs per delivered event. */
const keepLog = process.env.EP_KEEP_LOG === "1"
const kept = new Map<Tree, ReturnType<typeof makeLog>>()
const makeLog = (tree: Tree) => {
  const scope = Effect.runSync(Scope.make())
  const log = Effect.runSync(Scope.provide(tree.RunLogMemory.make(tree.settings), scope))
  return { scope, log }
}
const noLog = { append: () => Effect.succeed("ok" as const), appendSync: () => "ok" as const }

/** One tree's log, bridge and sockets for a round; `run(i)` emits run `i` and answers its process CPU µs. */
const setup = (tree: Tree) => {
  let made = kept.get(tree)
  if (made === undefined) {
    made = makeLog(tree)
    if (keepLog) kept.set(tree, made)
  }
  const { scope } = made
  const log = process.env.EP_NO_LOG === tree.name.slice(0, 3) ? noLog : made.log
  const bridge = Effect.runSync(tree.Bridge.make)
  for (let u = 0; u < users; u++) {
    for (let s = 0; s < sockets; s++) {
      const output = tree.SocketOutput.make(ws, socket, { maxSocketBytes: 8 * 1024 * 1024 })
      const tracked = new Map<string, { sent: SentLike; follower: number }>()
      const track = (run_id: string) => {
        let t = tracked.get(run_id)
        if (t === undefined) tracked.set(run_id, t = { sent: tree.SentSeqs.make() as SentLike, follower: 0 })
        return t
      }
      bridge.registerSync!({
        id: `conn_${u}_${s}`,
        user_id: `user_${u}`,
        send: (frame, event) => {
          if (event === undefined) return output.send(frame)
          const t = track(event.run_id)
          if (t.follower !== 0) return
          if (t.sent.claim !== undefined) {
            if (!t.sent.claim(event.seq)) return
          } else {
            if (t.sent.has(event.seq)) return
            t.sent.add(event.seq)
          }
          output.send(frame)
        }
      })
    }
  }
  const contexts = Array.from({ length: runs }, (_, r) => ({
    user_id: `user_${r % users}`,
    thread_id: `thread_${r}_${sha.slice(0, 6)}`,
    run_id: `run_${r}_${Math.random().toString(36).slice(2)}`,
    request_id: `req_${r}`
  }))
  const run = (i: number): number => {
    const context = contexts[i]!
    const cpu0 = process.cpuUsage()
    const emitter = tree.RunEmitter.make(context, { log, bridge })
    Effect.runSync(Effect.gen(function*() {
      yield* emitter.emit("ticker", 0, { type: "agent_started", task_description: `steps=${steps} interval_ms=0`, request_id: context.request_id })
      for (let step = 1; step <= steps; step++) {
        yield* emitter.emit("ticker", 0, { type: "agent_thinking", reasoning: `tick ${step} of ${steps}`, step_number: step })
      }
      yield* emitter.emit("ticker", 0, { type: "agent_completed", status: "completed", final_response: `ticked ${steps} times`, duration_ms: 1.5 })
    }))
    const cpu = process.cpuUsage(cpu0)
    return cpu.user + cpu.system
  }
  const close = () => {
    if (!keepLog) Effect.runSync(Scope.close(scope, Exit.void))
  }
  return { run, close }
}

const gc = () => (globalThis as { gc?: () => void }).gc?.()
const perRun = (steps + 2) * sockets

/**
 * One round of `tree`: process CPU µs per delivered event. With EP_INTERLEAVE=1 a round runs both
 * trees' runs one after the other (old, new, new, old, …), so that load from other processes falls
 * on both alike; otherwise each tree runs its whole round alone.
 */
const round = (tree: Tree): number => {
  const made = setup(tree)
  // each round starts from a collected heap: the previous round's garbage is not this round's cost
  gc()
  let cpu = 0
  for (let i = 0; i < runs; i++) cpu += made.run(i)
  made.close()
  return cpu / (runs * perRun)
}

const interleaved = (): [number, number] => {
  const made = trees.map(setup)
  gc()
  const cpu = [0, 0]
  for (let i = 0; i < runs; i++) {
    const order = i % 2 === 0 ? [0, 1] : [1, 0]
    for (const t of order) cpu[t]! += made[t]!.run(i)
  }
  for (const m of made) m.close()
  return [cpu[0]! / (runs * perRun), cpu[1]! / (runs * perRun)]
}

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

const interleave = process.env.EP_INTERLEAVE === "1"
// warm-up: both trees, twice
for (let i = 0; i < 2; i++) {
  if (interleave) interleaved()
  else for (const tree of trees) round(tree)
}
const results = trees.map(() => [] as Array<number>)
for (let i = 0; i < rounds; i++) {
  if (interleave) {
    const [a, b] = interleaved()
    results[0]!.push(a)
    results[1]!.push(b)
    continue
  }
  // alternate which goes first
  const order = i % 2 === 0 ? [0, 1] : [1, 0]
  for (const t of order) results[t]!.push(round(trees[t]!))
}
console.log(`emit path: ${runs} runs x ${steps + 2} events, ${users} users x ${sockets} sockets, ${rounds} alternated rounds${interleave ? " (runs interleaved)" : ""}`)
for (let t = 0; t < trees.length; t++) {
  const r = results[t]!
  const s = [...r].sort((a, b) => a - b)
  console.log(
    `${trees[t]!.name.padEnd(28)} median ${median(r).toFixed(3)} µs/delivered event (q1 ${s[Math.floor(s.length / 4)]!.toFixed(3)}, q3 ${
      s[Math.floor((3 * s.length) / 4)]!.toFixed(3)
    }, min ${s[0]!.toFixed(3)}, max ${s[s.length - 1]!.toFixed(3)})`
  )
}
const ratios = results[0]!.map((old, i) => results[1]![i]! / old)
const rs = [...ratios].sort((a, b) => a - b)
console.log(`new/old per round: median ${median(ratios).toFixed(3)} (min ${rs[0]!.toFixed(3)}, max ${rs[rs.length - 1]!.toFixed(3)})`)
