/**
 * The heartbeat's cost on the event loop: starts `node src/main.ts`, opens N idle
 * connections (one user), then reads `/ready`'s `event_loop.max_delay_ms` (a 100 ms
 * probe timer's worst lateness) every 200 ms for 5 s and prints the worst.
 * Run: `npm exec -- node bench/heartbeat-stall.ts [connections=5000] [heartbeat_ms=1000]`
 * (compare with heartbeat 0 to see what the rest of the process costs).
 */
import { spawn } from "node:child_process"
import { SignJWT } from "jose"
import WebSocket from "ws"
const SECRET = "x".repeat(40)
const N = Number(process.argv[2] ?? 5000)
/** Heartbeat interval of the server under test, ms (second argument; 0 = off, for comparison). */
const HEARTBEAT_MS = Number(process.argv[3] ?? 1000)
const server = spawn(process.execPath, ["src/main.ts"], { env: { ...process.env, AGENTWIRE_PORT: "0", AGENTWIRE_JWT_SECRET: SECRET, AGENTWIRE_HEARTBEAT_MS: String(HEARTBEAT_MS), AGENTWIRE_MAX_CONNECTIONS_PER_USER: "10000", AGENTWIRE_LOG_LEVEL: "info" }, stdio: ["ignore", "pipe", "pipe"] })
let out = ""
server.stdout.on("data", (c) => (out = (out + c).slice(-4000)))
server.stderr.on("data", (c) => (out += c))
const port: number = await new Promise((r) => { const t = setInterval(() => { const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out); if (m) { clearInterval(t); r(Number(m[1])) } }, 50) })
const token = await new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("u").setExpirationTime("1h").sign(new TextEncoder().encode(SECRET))
const sockets: WebSocket[] = []
for (let i = 0; i < N; i += 200) {
  await Promise.all(Array.from({ length: Math.min(200, N - i) }, () => new Promise<void>((res) => { const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { authorization: `Bearer ${token}` } }); ws.on("open", () => res()); ws.on("error", () => res()); sockets.push(ws) })))
}
console.error("open", sockets.filter((s) => s.readyState === 1).length)
let worst = 0
for (let i = 0; i < 25; i++) {
  await new Promise((r) => setTimeout(r, 200))
  const body = await (await fetch(`http://127.0.0.1:${port}/ready`)).json() as { components: { event_loop: { max_delay_ms: number } } }
  worst = Math.max(worst, body.components.event_loop.max_delay_ms)
}
console.log(`worst event-loop delay over 5 s: ${worst} ms with ${N} idle connections, heartbeat ${HEARTBEAT_MS} ms`)
server.kill("SIGKILL"); process.exit(0)
