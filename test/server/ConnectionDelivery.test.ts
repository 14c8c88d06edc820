/**
 * What one connection delivers of a run, over a real server (in memory): the
 * runs whose sent `seq`s it remembers are the ones it received most recently
 * (a run still streaming is never forgotten for the short runs started after
 * it), and `run_stopped` comes after the stopped run's terminal events also on
 * a connection that follows the run through the log (`resume_run`).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Scope } from "effect"
import type { ServerMessage } from "../../src/protocol/Protocol.ts"
import { MAX_TRACKED_RUNS } from "../../src/server/WebSocketConnection.ts"
import { AgentwireServer } from "../../src/services/AgentwireServer.ts"
import { Auth } from "../../src/services/Auth.ts"
import { type Client, connect } from "../fixtures/client.ts"
import * as TestServer from "../fixtures/testServer.ts"

const connectAs = (user: string) =>
  Effect.gen(function*() {
    const token = yield* Auth.use((auth) => auth.issue(user, 600))
    const url = yield* AgentwireServer.useSync((s) => `${s.url.replace(/^http/, "ws")}/ws`)
    const client = yield* connect(url, { headers: { authorization: `Bearer ${token}` } })
    yield* client.next("connection_established")
    return client
  })

const start = (client: Client, agent: string, request: string, request_id: string) =>
  Effect.gen(function*() {
    client.send({ type: "start_agent", agent, user_request: request, request_id })
    return (yield* client.next("run_accepted", (m) => m.request_id === request_id)).run_id
  })

const seqsOf = (frames: ReadonlyArray<ServerMessage>, run_id: string) =>
  frames.flatMap((m) => ("seq" in m && m.run_id === run_id ? [m.seq] : []))

const duplicates = (seqs: ReadonlyArray<number>) => seqs.filter((s, i) => seqs.indexOf(s) !== i)

/** Resumes once `run_id` sent an event with a `seq` above `seq` to `client`. */
const nextEventOf = (client: Client, run_id: string, seq: number) =>
  client.next("agent_thinking", (m) => m.run_id === run_id && m.seq > seq)

/**
 * A long `ticker` run (100 s unless stopped: still running when the test acts on it, on a loaded machine too) that
 * `client` started and follows live through `resume_run {after_seq: 0}`: resumes once the follower sent an event.
 */
const startFollowed = (client: Client) =>
  Effect.gen(function*() {
    const run_id = yield* start(client, "ticker", "steps=5000 interval_ms=20", "tick")
    yield* nextEventOf(client, run_id, 2)
    client.send({ type: "resume_run", run_id, after_seq: 0, request_id: "follow" })
    yield* client.next("run_resumed", (m) => m.request_id === "follow")
    // the follower sends the run's next event: it follows the run live now
    yield* nextEventOf(client, run_id, Math.max(...seqsOf(client.received, run_id)))
    return run_id
  })

describe("the runs a connection remembers (MAX_TRACKED_RUNS)", () => {
  it.live("a run still streaming is kept while more short runs than the bound start after it: resume(0) sends none of its events again", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("many-runs")
      const long = yield* start(client, "ticker", "steps=5000 interval_ms=5", "long")
      let last = (yield* nextEventOf(client, long, 0)).seq
      // more short runs than the connection remembers; the long run keeps receiving events between them, so it is
      // always among the runs received most recently (before: forgotten as the first one inserted)
      for (let i = 0; i < MAX_TRACKED_RUNS + 8; i++) {
        const run_id = yield* start(client, "echo", `x${i}`, `echo-${i}`)
        yield* client.next("agent_completed", (m) => m.run_id === run_id && m.depth === 0)
        if (i % 32 === 31) last = (yield* nextEventOf(client, long, last)).seq
      }
      client.send({ type: "resume_run", run_id: long, after_seq: 0, request_id: "again" })
      const resumed = yield* client.next("run_resumed", (m) => m.request_id === "again")
      const seqs = seqsOf(client.received, long)
      expect(duplicates(seqs)).toEqual([])
      expect([...seqs].sort((a, b) => a - b).slice(0, resumed.last_seq)).toEqual(Array.from({ length: resumed.last_seq }, (_, i) => i + 1))
      client.send({ type: "stop_agent", run_id: long, request_id: "stop" })
      yield* client.next("run_stopped", (m) => m.request_id === "stop")
    }).pipe(Effect.scoped, Effect.provide(TestServer.serverLayer())), 60_000)
})

describe("run_stopped on a connection that follows the run (resume_run)", () => {
  it.live("comes after the run's terminal events, which the follower reads from the log", () =>
    Effect.gen(function*() {
      const client = yield* connectAs("follower-stop")
      // long enough to be still running when the stop lands (steps=50, 1 s, could end first on a loaded machine: the stop then finds nothing)
      const run_id = yield* startFollowed(client)
      client.send({ type: "stop_agent", run_id, request_id: "stop" })
      const stopped = yield* client.next("run_stopped", (m) => m.request_id === "stop")
      expect(stopped.run_ids).toEqual([run_id])
      const order = client.received.filter((m) => m.type === "run_stopped" || ("seq" in m && m.run_id === run_id)).map((m) => m.type)
      expect(order.slice(-3)).toEqual(["agent_stopped", "agent_completed", "run_stopped"])
      const seqs = seqsOf(client.received, run_id)
      expect(duplicates(seqs)).toEqual([])
    }).pipe(Effect.scoped, Effect.provide(TestServer.serverLayer())), 30_000)
})

describe("shutdown, on a connection that follows a run (resume_run)", () => {
  it.live("the run's terminal events (server_shutdown) reach the socket before it is closed with 1001", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const server = yield* Layer.buildWithScope(TestServer.serverLayer(), scope)
      yield* Effect.gen(function*() {
        const client = yield* connectAs("follower-shutdown")
        const run_id = yield* startFollowed(client)
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
        const events = yield* client.runEvents(run_id)
        expect(events.slice(-2).map((e) => e.type)).toEqual(["agent_stopped", "agent_completed"])
        expect(events.at(-2)).toMatchObject({ reason: "server_shutdown" })
        expect(yield* client.closed).toMatchObject({ code: 1001 })
        yield* Fiber.join(closing)
      }).pipe(Effect.scoped, Effect.provide(server))
    }), 30_000)
})
