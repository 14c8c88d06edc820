/**
 * The client's failure paths, driven through a fake WebSocket: a command over
 * `max_message_bytes` (refused unsent; a 1009 close fails it, no retry loop),
 * a refused token (auth_failed, no retry), an epoch change with an unanswered
 * start (OUTCOME_UNKNOWN, not re-sent), 4009 (everything settles), more runs
 * to resume than the server's per-connection limit (queued; RATE_LIMITED
 * retried), an honest lost count, and per-run memory let go.
 */
import { afterEach, describe, expect, it } from "vitest"
import { type Client, ClientClosedError, CommandError, connect, MAX_RESUMES_IN_FLIGHT, RunLostError } from "../../src/client/AgentwireClient.ts"

class FakeSocket {
  static all: Array<FakeSocket> = []
  readyState = 1
  readonly sent: Array<Record<string, unknown>> = []
  onmessage: ((event: { data: unknown }) => void) | null = null
  onopen: (() => void) | null = null
  onclose: ((event: { code: number }) => void) | null = null
  onerror: (() => void) | null = null
  constructor(_url: string, _protocols: Array<string>) {
    FakeSocket.all.push(this)
  }
  send(data: string) {
    this.sent.push(JSON.parse(data) as Record<string, unknown>)
  }
  close() {
    this.readyState = 3
  }
  receive(frame: unknown) {
    this.onmessage?.({ data: JSON.stringify(frame) })
  }
  serverClose(code: number) {
    this.readyState = 3
    this.onclose?.({ code })
  }
  sentOf(type: string) {
    return this.sent.filter((f) => f.type === type)
  }
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0))
const established = (socket: FakeSocket, epoch = "e1", max = 65536) =>
  socket.receive({ type: "connection_established", connection_id: "c", user_id: "u", protocol_version: 1, max_message_bytes: max, server_epoch: epoch })
const runId = (i: number) => `run_${i.toString(16).padStart(32, "0")}`
const event = (run: string, seq: number, last: number) => ({
  ...(seq === last
    ? { type: "agent_completed", status: "completed", final_response: "done", duration_ms: 1 }
    : seq === 1
    ? { type: "agent_started", task_description: "t" }
    : { type: "agent_thinking", reasoning: `step ${seq}` }),
  event_id: `${run}:${seq}`,
  run_id: run,
  thread_id: "t",
  user_id: "u",
  agent_name: "a",
  depth: 0,
  seq,
  timestamp: "2026-01-01T00:00:00.000Z"
})
/** A JWT-shaped token (unsigned: the fake server does not check) with this `exp` in seconds. */
const jwt = (exp: number) => `x.${btoa(JSON.stringify({ sub: "u", exp })).replace(/=+$/, "")}.y`
/** Resolves to "pending" if `promise` has not settled by now. */
const settledOr = <A>(promise: Promise<A>) =>
  Promise.race([promise.then((v) => ({ ok: v }), (e: unknown) => ({ error: e })), tick().then(() => "pending" as const)])

const clients: Array<Client> = []
afterEach(() => {
  for (const c of clients.splice(0)) c.close()
  FakeSocket.all = []
})
const open = async (token: string | (() => string) = "t") => {
  const c = connect({ url: "ws://fake/ws", token, WebSocket: FakeSocket as never, pingIntervalMs: 0, reconnect: { initialDelayMs: 1, maxDelayMs: 2 } })
  clients.push(c)
  await tick()
  return c
}
const nextSocket = async (n: number) => {
  for (let i = 0; i < 100 && FakeSocket.all.length < n; i++) await new Promise((r) => setTimeout(r, 2))
  return FakeSocket.all[n - 1]!
}

describe("client failure paths", () => {
  it("a command over max_message_bytes is refused with MESSAGE_TOO_LARGE and never sent", async () => {
    const c = await open()
    const socket = FakeSocket.all[0]!
    established(socket, "e1", 1000)
    await expect(c.start("echo", "x".repeat(2000))).rejects.toMatchObject({ name: "CommandError", code: "MESSAGE_TOO_LARGE" })
    expect(socket.sentOf("start_agent")).toEqual([])
    // multi-byte characters count as their UTF-8 size
    await expect(c.start("echo", "é".repeat(600))).rejects.toBeInstanceOf(CommandError)
    expect(c.state.status).toBe("open")
  })

  it("a command that made the server close with 1009 fails, and is not sent again after the reconnect", async () => {
    const c = await open()
    const first = FakeSocket.all[0]!
    established(first, "e1", 1_000_000) // the server's real limit is lower than it said
    const start = c.start("echo", "x".repeat(5000))
    expect(first.sentOf("start_agent").length).toBe(1)
    first.serverClose(1009)
    await expect(start).rejects.toMatchObject({ code: "MESSAGE_TOO_LARGE" })
    const second = await nextSocket(2)
    established(second)
    expect(second.sentOf("start_agent")).toEqual([])
    // later commands still work
    const list = c.listRuns()
    second.receive({ type: "runs", runs: [], request_id: second.sentOf("list_runs")[0]!.request_id })
    expect(await list).toEqual([])
  })

  it("a fixed token refused at 4001: auth_failed, no retry, pending runs and commands fail typed", async () => {
    const c = await open(jwt(Math.floor(Date.now() / 1000) + 3600))
    const socket = FakeSocket.all[0]!
    established(socket)
    const run = c.follow(runId(1))
    const list = c.listRuns()
    socket.serverClose(4001)
    expect(c.state.status).toBe("auth_failed")
    await expect(run.completed).rejects.toMatchObject({ name: "RunLostError", reason: "auth_failed" })
    await expect(list).rejects.toMatchObject({ name: "ClientClosedError", reason: "auth_failed" })
    await expect(c.listRuns()).rejects.toBeInstanceOf(ClientClosedError)
    await new Promise((r) => setTimeout(r, 20))
    expect(FakeSocket.all.length).toBe(1)
  })

  it("a fixed token past its exp: auth_failed without a connection attempt loop", async () => {
    const c = await open(jwt(Math.floor(Date.now() / 1000) - 10))
    expect(c.state.status).toBe("auth_failed")
    expect(FakeSocket.all.length).toBe(0)
  })

  it("a token function: a 4001 close is followed by a reconnect with a fresh token", async () => {
    let issued = 0
    const c = await open(() => {
      issued++
      return jwt(Math.floor(Date.now() / 1000) + 3600)
    })
    established(FakeSocket.all[0]!)
    FakeSocket.all[0]!.serverClose(4001)
    expect(c.state.status).toBe("reconnecting")
    established(await nextSocket(2))
    expect(c.state.status).toBe("open")
    expect(issued).toBe(2)
  })

  it("another server_epoch with an unanswered start: OUTCOME_UNKNOWN, not sent again", async () => {
    const c = await open()
    established(FakeSocket.all[0]!, "e1")
    const start = c.start("ticker", "steps=5")
    expect(FakeSocket.all[0]!.sentOf("start_agent").length).toBe(1)
    FakeSocket.all[0]!.serverClose(1006)
    const second = await nextSocket(2)
    established(second, "e2")
    await expect(start).rejects.toMatchObject({ name: "CommandError", code: "OUTCOME_UNKNOWN" })
    expect(second.sentOf("start_agent")).toEqual([])
  })

  it("the same epoch: the unanswered start is sent again with its request_id", async () => {
    const c = await open()
    established(FakeSocket.all[0]!, "e1")
    const start = c.start("ticker", "steps=5")
    const request_id = FakeSocket.all[0]!.sentOf("start_agent")[0]!.request_id
    FakeSocket.all[0]!.serverClose(1006)
    const second = await nextSocket(2)
    established(second, "e1")
    expect(second.sentOf("start_agent").map((f) => f.request_id)).toEqual([request_id])
    expect(await settledOr(start)).toBe("pending")
  })

  it("4009: every pending command and run settles with a typed closed error; reconnectNow starts again", async () => {
    const c = await open()
    established(FakeSocket.all[0]!)
    const start = c.start("ticker", "steps=5")
    const run = c.follow(runId(2))
    FakeSocket.all[0]!.serverClose(4009)
    expect(c.state).toMatchObject({ status: "closed", cause: "replaced" })
    await expect(start).rejects.toMatchObject({ name: "ClientClosedError", reason: "replaced" })
    await expect(run.completed).rejects.toMatchObject({ reason: "replaced" })
    c.reconnectNow()
    established(await nextSocket(2))
    expect(c.state.status).toBe("open")
  })

  it("more runs to resume than the server allows at once: queued, RATE_LIMITED retried, every run settles", async () => {
    const c = await open()
    const socket = FakeSocket.all[0]!
    established(socket)
    const runs = Array.from({ length: 90 }, (_, i) => c.follow(runId(i + 1)))
    const sent = () => socket.sentOf("resume_run")
    expect(sent().length).toBe(MAX_RESUMES_IN_FLIGHT)
    // the server refuses one anyway: it is tried again later, not left pending
    const refused = sent()[0]!
    socket.receive({ type: "error", code: "RATE_LIMITED", message: "busy", retry_after_ms: 1, request_id: refused.request_id })
    const answered = new Set<string>()
    for (let round = 0; round < 50 && answered.size < 90; round++) {
      for (const frame of sent()) {
        const run = frame.run_id as string
        if (answered.has(run) || frame.answered === true) continue
        frame.answered = true
        answered.add(run)
        for (let seq = 1; seq <= 3; seq++) socket.receive(event(run, seq, 3))
        socket.receive({ type: "run_resumed", run_id: run, after_seq: 0, last_seq: 3, status: "completed", request_id: frame.request_id })
      }
      await new Promise((r) => setTimeout(r, 5))
    }
    const results = await Promise.all(runs.map((r) => r.completed.then((e) => e.status)))
    expect(results.every((s) => s === "completed")).toBe(true)
    expect(answered.size).toBe(90)
  })

  it("after a reconnect, runs that came back RUN_EXPIRED are counted as lost, not 'resumed'", async () => {
    const c = await open()
    established(FakeSocket.all[0]!)
    const a = c.follow(runId(1))
    const b = c.follow(runId(2))
    FakeSocket.all[0]!.serverClose(1006)
    const second = await nextSocket(2)
    established(second)
    const [ra, rb] = second.sentOf("resume_run")
    second.receive({ type: "error", code: "RUN_EXPIRED", message: "gone", run_id: runId(1), request_id: ra!.request_id })
    second.receive({ type: "run_resumed", run_id: runId(2), after_seq: 0, last_seq: 0, status: "running", request_id: rb!.request_id })
    expect(c.state).toMatchObject({ status: "open", resumed: 1, lost: 1 })
    await expect(a.completed).rejects.toBeInstanceOf(RunLostError)
    expect(await settledOr(b.completed)).toBe("pending")
  })

  it("an unknown refusal code for a resume fails the run generically instead of leaving it pending", async () => {
    const c = await open()
    established(FakeSocket.all[0]!)
    const run = c.follow(runId(3))
    const [frame] = FakeSocket.all[0]!.sentOf("resume_run")
    FakeSocket.all[0]!.receive({ type: "error", code: "INTERNAL", message: "boom", request_id: frame!.request_id })
    await expect(run.completed).rejects.toMatchObject({ reason: "refused" })
  })

  it("a resume answered 'beyond the run's last seq' (the log ends before what this client got: the instance that ran it lost its lease) loses the run as diverged, once, without resuming again", async () => {
    const c = await open()
    established(FakeSocket.all[0]!)
    const run = c.follow(runId(5))
    const first = FakeSocket.all[0]!
    for (let seq = 1; seq <= 20; seq++) first.receive(event(runId(5), seq, 1000))
    first.serverClose(1006)
    const second = await nextSocket(2)
    established(second)
    const [frame] = second.sentOf("resume_run")
    expect(frame).toMatchObject({ run_id: runId(5), after_seq: 20 })
    second.receive({
      type: "error",
      code: "INVALID_MESSAGE",
      message: "invalid resume_run: after_seq 20 is beyond the run's last seq 18",
      run_id: runId(5),
      last_seq: 18,
      request_id: frame!.request_id
    })
    const lost = await run.completed.then(() => undefined, (e: unknown) => e)
    expect(lost).toBeInstanceOf(RunLostError)
    expect(lost).toMatchObject({ reason: "diverged", lastDeliveredSeq: 20 })
    expect((lost as RunLostError).message).toMatch(/lost its lease/)
    expect(c.state).toMatchObject({ status: "open", lost: 1 })
    await tick()
    expect(second.sentOf("resume_run").length).toBe(1)
  })

  it("memory: events an iterator took are let go; an ended run is forgotten; held events are bounded", async () => {
    const c = await open()
    const socket = FakeSocket.all[0]!
    established(socket)
    const run = c.follow(runId(4))
    const iterator = run[Symbol.asyncIterator]()
    for (let seq = 1; seq <= 200; seq++) {
      socket.receive(event(runId(4), seq, 1000))
      await iterator.next()
    }
    expect(run.lastSeq).toBe(200)
    expect(run.events.length).toBe(0)
    socket.receive(event(runId(4), 1000, 1000))
    // held beyond a gap: bounded; past the bound the run is resumed from its high-water seq
    for (let seq = 202; seq < 202 + 5000; seq++) socket.receive(event(runId(4), seq, 100_000))
    const resumes = socket.sentOf("resume_run").filter((f) => f.run_id === runId(4))
    expect(resumes.at(-1)).toMatchObject({ after_seq: 200 })
    expect(resumes.length).toBeGreaterThan(1)
    for (let seq = 201; seq <= 1000; seq++) socket.receive(event(runId(4), seq, 1000))
    await run.completed
    // the client no longer holds the ended run: following it again asks the server anew
    const again = c.follow(runId(4))
    expect(again).not.toBe(run)
    expect(socket.sentOf("resume_run").at(-1)).toMatchObject({ run_id: runId(4), after_seq: 0 })
  })
})
