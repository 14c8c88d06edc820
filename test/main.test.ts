/**
 * The entrypoint as `npm start` runs it: a child process on Node 24.
 * Startup failures print one line naming the cause and exit 3; a good start
 * prints a usable demo token and URL, and SIGINT shuts down cleanly.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { connect as netConnect, createServer, type Server } from "node:net"
import { fileURLToPath } from "node:url"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { SignJWT } from "jose"
import { connect } from "./fixtures/client.ts"
import * as Fake from "./fixtures/fakeOpenAi.ts"
import { INSTALL_HINT, redisServerPath, startRedis } from "./fixtures/redisServer.ts"

const MAIN = fileURLToPath(new URL("../src/main.ts", import.meta.url))
/**
 * Every test here starts Node 24 on src/main.ts (type stripping, module loading) at least once:
 * 1.5-7.5 s each on an idle machine, several times that on a loaded 2-core CI machine, so the
 * default 20 s (and the former 30 s for the 5 s Redis timeout) left too little room.
 */
const SPAWN_TIMEOUT_MS = 90_000

interface Started {
  readonly child: ChildProcess
  readonly stdout: () => string
  readonly stderr: () => string
  /** Resumes when stdout or stderr has printed text matching `pattern`. */
  readonly printed: (pattern: RegExp) => Effect.Effect<string>
  readonly exit: Effect.Effect<number | null>
}

const start = (env: Record<string, string>) =>
  Effect.acquireRelease(
    Effect.sync((): Started => {
      // history goes to a fresh directory unless the test names one
      const child = spawn(process.execPath, [MAIN], {
        env: { PATH: process.env.PATH ?? "", AGENTWIRE_PORT: "0", AGENTWIRE_DATA_DIR: mkdtempSync(join(tmpdir(), "agentwire-main-")), ...env },
        stdio: ["ignore", "pipe", "pipe"]
      })
      let out = ""
      let err = ""
      const listeners = new Set<() => void>()
      child.stdout!.on("data", (c: Buffer) => {
        out += c.toString()
        for (const l of listeners) l()
      })
      child.stderr!.on("data", (c: Buffer) => {
        err += c.toString()
        for (const l of listeners) l()
      })
      // 'close', not 'exit': 'exit' may come before the last of stdout/stderr has been read, and the tests read them right after
      const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)))
      return {
        child,
        stdout: () => out,
        stderr: () => err,
        printed: (pattern) =>
          Effect.callback((resume) => {
            const check = () => {
              const match = pattern.exec(out + err)
              if (match !== null) {
                listeners.delete(check)
                resume(Effect.succeed(match[0]))
              }
            }
            listeners.add(check)
            check()
          }),
        exit: Effect.promise(() => exited)
      }
    }),
    (s) => Effect.sync(() => s.child.kill("SIGKILL"))
  )

const listenOnFreePort = Effect.acquireRelease(
  Effect.callback<{ server: Server; port: number }>((resume) => {
    const server = createServer()
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      resume(Effect.succeed({ server, port: typeof address === "object" && address !== null ? address.port : 0 }))
    })
  }),
  ({ server }) => Effect.sync(() => server.close())
)

describe("src/main.ts", () => {
  const failures: ReadonlyArray<[string, Record<string, string>, RegExp]> = [
    ["a bad port", { AGENTWIRE_PORT: "eighty" }, /AGENTWIRE_PORT must be an integer from 0 to 65535 \(got "eighty"\)/],
    ["a bad log level", { AGENTWIRE_LOG_LEVEL: "chatty" }, /AGENTWIRE_LOG_LEVEL must be one of/],
    ["a bad message size", { AGENTWIRE_MAX_MESSAGE_BYTES: "-5" }, /AGENTWIRE_MAX_MESSAGE_BYTES must be/],
    ["a short secret", { AGENTWIRE_JWT_SECRET: "abc" }, /AGENTWIRE_JWT_SECRET must be at least 32 characters/],
    ["no secret in production", { NODE_ENV: "production" }, /AGENTWIRE_JWT_SECRET must be set when NODE_ENV=production/],
    ["an LLM base URL without a model", { AGENTWIRE_LLM_BASE_URL: "http://127.0.0.1:9/v1" }, /AGENTWIRE_LLM_MODEL must be set when AGENTWIRE_LLM_BASE_URL is/],
    ["a bad LLM timeout", { AGENTWIRE_LLM_TIMEOUT_MS: "never" }, /AGENTWIRE_LLM_TIMEOUT_MS must be an integer/],
    // Node's recursive mkdir loops for ever here (ENOENT under /proc): startup hung instead of failing
    ["a data directory that cannot be created", { AGENTWIRE_DATA_DIR: "/proc/agentwire-data" }, /cannot create AGENTWIRE_DATA_DIR: .*ENOENT.*\/proc\/agentwire-data/],
    ["a data directory that is a file", { AGENTWIRE_DATA_DIR: "/etc/hostname/data" }, /cannot create AGENTWIRE_DATA_DIR: \/etc\/hostname is not a directory/]
  ]
  for (const [label, env, message] of failures) {
    it.live(`exits 3 with one clear line for ${label}`, () =>
      Effect.gen(function*() {
        const proc = yield* start(env)
        expect(yield* proc.exit).toBe(3)
        const lines = proc.stderr().trim().split("\n")
        expect(lines).toHaveLength(1)
        expect(lines[0]).toMatch(/^agentwire: cannot start: /)
        expect(lines[0]).toMatch(message)
        expect(proc.stdout()).toBe("")
      }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)
  }

  it.live("exits 3 naming the history database, never its password, when it cannot be reached", () =>
    Effect.gen(function*() {
      const { port, server } = yield* listenOnFreePort
      // a port that refuses connections
      yield* Effect.promise(() => new Promise<void>((resolve) => server.close(() => resolve())))
      const password = "hunter2-do-not-print"
      const proc = yield* start({ AGENTWIRE_DATABASE_URL: `postgres://agent:${password}@127.0.0.1:${port}/history` })
      expect(yield* proc.exit).toBe(3)
      const lines = proc.stderr().trim().split("\n")
      expect(lines).toHaveLength(1)
      expect(lines[0]).toMatch(new RegExp(`^agentwire: cannot start: history database postgres://agent@127\\.0\\.0\\.1:${port}/history cannot be used`))
      expect(proc.stderr() + proc.stdout()).not.toContain(password)
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)

  it.live("history survives a restart: SIGTERM, start again on the same data dir; the thread is listed and the assistant's next run sees it", () =>
    Effect.gen(function*() {
      const dataDir = mkdtempSync(join(tmpdir(), "agentwire-restart-"))
      const secret = "restart-test-secret-0123456789abcdef"
      const model = yield* Fake.start([Fake.text(["Nice to meet you, ", "Ada."]), Fake.text(["Your name is Ada."])])
      const env = {
        AGENTWIRE_DATA_DIR: dataDir,
        AGENTWIRE_JWT_SECRET: secret,
        AGENTWIRE_LLM_BASE_URL: model.baseUrl,
        AGENTWIRE_LLM_MODEL: "tiny"
      }
      const token = yield* Effect.promise(() =>
        new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("ada").setIssuedAt().setExpirationTime("10m").sign(new TextEncoder().encode(secret)))
      const open = (proc: Started) =>
        Effect.gen(function*() {
          const listening = yield* proc.printed(/listening on http:\/\/127\.0\.0\.1:\d+/)
          const port = /:(\d+)$/.exec(listening)![1]
          const client = yield* connect(`ws://127.0.0.1:${port}/ws?token=${token}`)
          yield* client.next("connection_established")
          return client
        })

      const first = yield* start(env)
      const client1 = yield* open(first)
      client1.send({ type: "user_message", text: "My name is Ada", thread_id: "t-restart" })
      const events1 = yield* client1.runEvents()
      expect(events1.at(-1)).toMatchObject({ type: "agent_completed", status: "completed", final_response: "Nice to meet you, Ada." })
      first.child.kill("SIGTERM")
      expect(yield* first.exit).toBe(0)

      const second = yield* start(env)
      const client2 = yield* open(second)
      client2.send({ type: "list_threads", request_id: "l" })
      const listed = yield* client2.next("threads", (m) => m.request_id === "l")
      expect(listed.threads).toMatchObject([{ thread_id: "t-restart", title: "My name is Ada", last_status: "completed" }])
      client2.send({ type: "get_thread", thread_id: "t-restart", request_id: "g" })
      const thread = yield* client2.next("thread", (m) => m.request_id === "g")
      expect(thread.messages.map((m) => [m.role, m.content])).toEqual([["user", "My name is Ada"], ["assistant", "Nice to meet you, Ada."]])
      client2.send({ type: "user_message", text: "What is my name?", thread_id: "t-restart" })
      const events2 = yield* client2.runEvents()
      expect(events2.at(-1)).toMatchObject({ type: "agent_completed", final_response: "Your name is Ada." })
      // the model saw the conversation from before the restart
      const messages = (model.requests[1]!.body as { messages: ReadonlyArray<{ role: string; content: unknown }> }).messages
      expect(messages.filter((m) => m.role !== "system").map((m) => [m.role, typeof m.content === "string" ? m.content : JSON.stringify(m.content)])).toEqual([
        ["user", "My name is Ada"],
        ["assistant", "Nice to meet you, Ada."],
        ["user", "What is my name?"]
      ])
      second.child.kill("SIGTERM")
      expect(yield* second.exit).toBe(0)
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)

  it.live("exits 3 naming the port when it is already in use", () =>
    Effect.gen(function*() {
      const { port } = yield* listenOnFreePort
      const proc = yield* start({ AGENTWIRE_PORT: String(port) })
      expect(yield* proc.exit).toBe(3)
      expect(proc.stderr().trim()).toBe(
        `agentwire: cannot start: port ${port} on 127.0.0.1 is already in use (set AGENTWIRE_PORT to another port)`
      )
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)

  it.live("SIGINT: a run that finishes within the grace period completes normally; one that does not is stopped (server_shutdown); 1001; exit 0", () =>
    Effect.gen(function*() {
      const proc = yield* start({ AGENTWIRE_SHUTDOWN_GRACE_MS: "4000" })
      const url = yield* proc.printed(/ws:\/\/127\.0\.0\.1:\d+\/ws\?token=\S+/)
      const client = yield* connect(url)
      client.send({ type: "start_agent", agent: "ticker", user_request: "steps=3 interval_ms=50", request_id: "short" })
      client.send({ type: "start_agent", agent: "ticker", user_request: "steps=1000 interval_ms=50", request_id: "long" })
      const short = yield* client.next("run_accepted", (m) => m.request_id === "short")
      const long = yield* client.next("run_accepted", (m) => m.request_id === "long")
      yield* client.next("agent_thinking", (m) => m.run_id === long.run_id)
      proc.child.kill("SIGINT")
      // the signal and a frame race: wait until the server is draining (admission closed) before the late start
      yield* proc.printed(/draining/)
      // admission is closed: a new start is refused, while other frames are still answered
      client.send({ type: "start_agent", agent: "echo", user_request: "late", request_id: "late" })
      expect(yield* client.next("error", (e) => e.request_id === "late")).toMatchObject({ code: "SHUTTING_DOWN" })
      client.send({ type: "ping" })
      yield* client.next("pong")
      const shortEvents = yield* client.runEvents(short.run_id)
      expect(shortEvents.at(-1)).toMatchObject({ type: "agent_completed", status: "completed", depth: 0 })
      const events = yield* client.runEvents(long.run_id)
      expect(events.slice(-2).map((e) => e.type)).toEqual(["agent_stopped", "agent_completed"])
      expect(events.at(-2)).toMatchObject({ reason: "server_shutdown" })
      expect(events.at(-1)).toMatchObject({ status: "cancelled", depth: 0 })
      expect(events.map((e) => ("seq" in e ? e.seq : 0))).toEqual(events.map((_, i) => i + 1))
      expect(yield* client.closed).toMatchObject({ code: 1001, reason: "server shutting down" })
      expect(yield* proc.exit).toBe(0)
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)

  it.live("raw upgrades with unparsable targets get 400; the process lives on and no output carries the token", () =>
    Effect.gen(function*() {
      const proc = yield* start({})
      const url = yield* proc.printed(/ws:\/\/127\.0\.0\.1:\d+\/ws\?token=\S+/)
      const token = url.split("token=")[1]!
      const port = Number(/:(\d+)\//.exec(url)![1])
      for (const target of ["http://[", "http://", "http://h:99999/ws", `http://[?token=${token}`]) {
        const answer = yield* Effect.callback<string>((resume) => {
          const socket = netConnect(port, "127.0.0.1", () =>
            socket.write(`GET ${target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n`))
          let text = ""
          socket.on("data", (c) => (text += c.toString()))
          socket.on("error", () => {})
          socket.on("close", () => resume(Effect.succeed(text)))
        })
        expect(answer, target).toMatch(/^HTTP\/1\.1 400 /)
      }
      const client = yield* connect(url)
      yield* client.next("connection_established")
      yield* proc.printed(/handshake refused.*status=400/)
      // the demo banner prints the token four times on purpose (token, page URL, WebSocket URL, curl); nothing else may
      expect((proc.stdout() + proc.stderr()).split(token).length - 1).toBe(4)
      proc.child.kill("SIGINT")
      expect(yield* proc.exit).toBe(0)
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)

  it.live("without a secret it prints a usable demo token and URL; logs never carry the token; SIGINT exits 0", () =>
    Effect.gen(function*() {
      const proc = yield* start({})
      const url = yield* proc.printed(/ws:\/\/127\.0\.0\.1:\d+\/ws\?token=\S+/)
      const token = url.split("token=")[1]!
      const client = yield* connect(url)
      expect(yield* client.next("connection_established")).toMatchObject({ user_id: "demo-user" })
      client.send({ type: "start_agent", agent: "echo", user_request: "hello" })
      yield* client.runEvents()
      yield* proc.printed(/run ended/)
      client.ws.close()
      yield* proc.printed(/connection closed/)
      const logLines = (proc.stdout() + proc.stderr()).split("\n").filter((l) => /(INFO|WARN|ERROR|DEBUG)/.test(l))
      expect(logLines.some((l) => l.includes("connection opened"))).toBe(true)
      expect(logLines.some((l) => l.includes(token))).toBe(false)
      proc.child.kill("SIGINT")
      expect(yield* proc.exit).toBe(0)
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)

  it.live("with AGENTWIRE_LLM_* set, assistant is the default agent: the answer streams as partial_result; the key is in no output or frame", () =>
    Effect.gen(function*() {
      const key = "sk-main-test-key-7f3a9c5e1d"
      const server = yield* Fake.start([Fake.text(["Hello ", "from ", "the model."])])
      const proc = yield* start({
        AGENTWIRE_LLM_BASE_URL: server.baseUrl,
        AGENTWIRE_LLM_MODEL: "tiny",
        AGENTWIRE_LLM_API_KEY: key,
        AGENTWIRE_LOG_LEVEL: "debug"
      })
      const url = yield* proc.printed(/ws:\/\/127\.0\.0\.1:\d+\/ws\?token=\S+/)
      const client = yield* connect(url)
      client.send({ type: "user_message", text: "hi there" })
      const events = yield* client.runEvents()
      expect(events[0]).toMatchObject({ type: "agent_started", agent_name: "assistant" })
      const deltas = events.flatMap((e) => (e.type === "partial_result" ? [e.delta] : []))
      expect(deltas.join("")).toBe("Hello from the model.")
      expect(events.at(-1)).toMatchObject({ type: "agent_completed", status: "completed", final_response: "Hello from the model." })
      expect(server.requests[0]!.headers.authorization).toBe(`Bearer ${key}`)
      expect(server.requests[0]!.body).toMatchObject({ model: "tiny", stream: true })
      yield* proc.printed(/run ended/)
      proc.child.kill("SIGINT")
      expect(yield* proc.exit).toBe(0)
      const output = proc.stdout() + proc.stderr()
      expect(output).toContain("run ended")
      expect(output).not.toContain("7f3a9c5e1d")
      expect(client.received.map((m) => JSON.stringify(m)).some((f) => f.includes("7f3a9c5e1d"))).toBe(false)
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)

  it.live("without AGENTWIRE_LLM_*, starting assistant answers UNKNOWN_AGENT naming the variables to set", () =>
    Effect.gen(function*() {
      const proc = yield* start({})
      const url = yield* proc.printed(/ws:\/\/127\.0\.0\.1:\d+\/ws\?token=\S+/)
      const client = yield* connect(url)
      client.send({ type: "start_agent", agent: "assistant", user_request: "hello", request_id: "r1" })
      const error = yield* client.next("error")
      expect(error).toMatchObject({ code: "UNKNOWN_AGENT", request_id: "r1" })
      expect(error.message).toContain("AGENTWIRE_LLM_BASE_URL")
      expect(error.message).toContain("AGENTWIRE_LLM_MODEL")
      proc.child.kill("SIGINT")
      expect(yield* proc.exit).toBe(0)
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)
})

const redisInstalled = redisServerPath() !== undefined
if (!redisInstalled) console.warn(`src/main.ts Redis startup tests skipped: redis-server is not installed (${INSTALL_HINT})`)

/** A TCP server that accepts connections and never answers (a wedged Redis, or not Redis); `connected` resumes at the first. */
const silentServer = Effect.acquireRelease(
  Effect.callback<{ server: Server; port: number; connected: Effect.Effect<void> }>((resume) => {
    let first: (() => void) | undefined
    let seen = false
    const sockets: Array<import("node:net").Socket> = []
    const server = createServer((socket) => {
      sockets.push(socket)
      socket.on("error", () => {})
      seen = true
      first?.()
    })
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      resume(Effect.succeed({
        server,
        port: typeof address === "object" && address !== null ? address.port : 0,
        connected: Effect.callback<void>((done) => {
          if (seen) return done(Effect.void)
          first = () => done(Effect.void)
        })
      }))
    })
    ;(server as Server & { sockets?: typeof sockets }).sockets = sockets
  }),
  ({ server }) => Effect.sync(() => {
    for (const socket of (server as Server & { sockets?: Array<import("node:net").Socket> }).sockets ?? []) socket.destroy()
    server.close()
  })
)

describe.skipIf(!redisInstalled)("src/main.ts with AGENTWIRE_REDIS_URL", () => {
  it.live("a Redis that accepts connections but never answers (SIGSTOP): exits 3 within a bounded time, one line naming host:port, never the password", () =>
    Effect.gen(function*() {
      const redis = yield* Effect.acquireRelease(Effect.promise(() => startRedis()), (r) => Effect.promise(() => r.kill()))
      const pid = redis.pid()!
      process.kill(pid, "SIGSTOP")
      yield* Effect.addFinalizer(() => Effect.sync(() => process.kill(pid, "SIGCONT")))
      const password = "stopped-redis-pass-9d2"
      const proc = yield* start({ AGENTWIRE_REDIS_URL: `redis://:${password}@127.0.0.1:${redis.port}` })
      expect(yield* proc.exit).toBe(3)
      const lines = proc.stderr().trim().split("\n")
      expect(lines).toEqual([`agentwire: cannot start: cannot reach Redis at 127.0.0.1:${redis.port} (AGENTWIRE_REDIS_URL): did not answer within 5 s`])
      expect(proc.stderr() + proc.stdout()).not.toContain(password)
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)

  it.live("SIGTERM while startup waits for a Redis that never answers: the process exits", () =>
    Effect.gen(function*() {
      const silent = yield* silentServer
      const proc = yield* start({ AGENTWIRE_REDIS_URL: `redis://127.0.0.1:${silent.port}` })
      yield* silent.connected
      proc.child.kill("SIGTERM")
      expect(yield* proc.exit).toBe(0)
      expect(proc.stderr()).toBe("")
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)

  it.live("a good start says it runs on Redis (host:port, instance id, never the password); SIGTERM exits 0", () =>
    Effect.gen(function*() {
      const redis = yield* Effect.acquireRelease(Effect.promise(() => startRedis(["--requirepass", "mode-line-pass"])), (r) => Effect.promise(() => r.stop()))
      const proc = yield* start({ AGENTWIRE_REDIS_URL: `redis://:mode-line-pass@127.0.0.1:${redis.port}` })
      yield* proc.printed(/listening on http/)
      yield* proc.printed(new RegExp(`running on Redis at 127\\.0\\.0\\.1:${redis.port}, instance inst_\\S+ \\(AGENTWIRE_REDIS_URL\\)`))
      proc.child.kill("SIGTERM")
      expect(yield* proc.exit).toBe(0)
      expect(proc.stdout() + proc.stderr()).not.toContain("mode-line-pass")
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)

  // every Redis wait at shutdown is bounded (acknowledgements 1 s, commands node-redis' 5 s, closes 1 s): about 13 s here
  it.live("SIGTERM while Redis has stopped answering (SIGSTOP) after a good start: the process still exits", () =>
    Effect.gen(function*() {
      const redis = yield* Effect.acquireRelease(Effect.promise(() => startRedis()), (r) => Effect.promise(() => r.kill()))
      const proc = yield* start({ AGENTWIRE_REDIS_URL: redis.url })
      yield* proc.printed(/listening on http/)
      const pid = redis.pid()!
      process.kill(pid, "SIGSTOP")
      yield* Effect.addFinalizer(() => Effect.sync(() => process.kill(pid, "SIGCONT")))
      const sent = Date.now()
      proc.child.kill("SIGTERM")
      expect(yield* proc.exit).toBe(0)
      console.log(`exited ${Date.now() - sent} ms after SIGTERM with Redis stopped`)
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)

  it.live("Redis refusing connections: exits 3 with exactly one line on any stream (no client warning besides it)", () =>
    Effect.gen(function*() {
      const { port, server } = yield* listenOnFreePort
      yield* Effect.promise(() => new Promise<void>((resolve) => server.close(() => resolve())))
      const proc = yield* start({ AGENTWIRE_REDIS_URL: `redis://:pw-refused@127.0.0.1:${port}` })
      expect(yield* proc.exit).toBe(3)
      expect(proc.stderr().trim()).toBe(`agentwire: cannot start: cannot reach Redis at 127.0.0.1:${port} (AGENTWIRE_REDIS_URL): connection refused`)
      expect(proc.stdout()).toBe("")
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)
})

describe("src/main.ts startup mode", () => {
  it.live("without AGENTWIRE_REDIS_URL (or with it empty) it says it runs in memory", () =>
    Effect.gen(function*() {
      const proc = yield* start({ AGENTWIRE_REDIS_URL: "" })
      yield* proc.printed(/running in memory, one instance \(AGENTWIRE_REDIS_URL unset or empty\)/)
      proc.child.kill("SIGINT")
      expect(yield* proc.exit).toBe(0)
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)
})

describe("npm start", () => {
  const ROOT = fileURLToPath(new URL("..", import.meta.url))
  // a container whose PID 1 is `npm start` stops it with SIGTERM to npm alone: the server must get it
  // (reviewer's F2 at stop 18: `sh -c "node src/main.ts"` stood between them; npm died, the server was orphaned and kept serving)
  it.live("SIGTERM to npm's own pid reaches the server: it drains and exits, nothing is left serving", () =>
    Effect.gen(function*() {
      const child = yield* Effect.acquireRelease(
        Effect.sync(() =>
          spawn("npm", ["start", "--silent"], {
            cwd: ROOT,
            detached: true, // its own process group, so that the release can kill whatever is left
            env: {
              PATH: process.env.PATH ?? "",
              HOME: process.env.HOME ?? "",
              AGENTWIRE_PORT: "0",
              AGENTWIRE_DATA_DIR: mkdtempSync(join(tmpdir(), "agentwire-npm-start-")),
              AGENTWIRE_JWT_SECRET: "npm-start-test-secret-0123456789abcdef"
            },
            stdio: ["ignore", "pipe", "pipe"]
          })
        ),
        (c) =>
          Effect.sync(() => {
            try {
              process.kill(-c.pid!, "SIGKILL")
            } catch {
              // the group is gone already
            }
          })
      )
      let out = ""
      const listening = Effect.callback<void>((resume) => {
        const check = () => {
          if (/listening on http/.test(out)) resume(Effect.void)
        }
        child.stdout!.on("data", (c: Buffer) => {
          out += c.toString()
          check()
        })
        child.stderr!.on("data", (c: Buffer) => void (out += c.toString()))
      })
      // the server holds the pipe's write end: it closes when the server itself has exited
      const closed = Effect.callback<void>((resume) => void child.stdout!.on("close", () => resume(Effect.void)))
      yield* listening
      process.kill(child.pid!, "SIGTERM")
      const ended = yield* closed.pipe(Effect.timeoutOption("15 seconds"))
      expect(ended._tag, `the server still holds its stdout 15 s after SIGTERM to npm; output:\n${out}`).toBe("Some")
    }).pipe(Effect.scoped), SPAWN_TIMEOUT_MS)
})
