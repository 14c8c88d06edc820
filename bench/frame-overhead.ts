/**
 * Memory a queued WebSocket frame costs beyond its bytes: queues 200,000 frames
 * of 228 bytes on a socket whose peer does not read, and prints the RSS growth
 * per frame beyond `bufferedAmount`. The figure behind
 * `SocketOutput.FRAME_OVERHEAD_BYTES`. Run: `npm exec -- node --expose-gc bench/frame-overhead.ts`.
 */
import { WebSocket, WebSocketServer } from "ws"

const gc = (globalThis as { gc?: () => void }).gc
const wss = new WebSocketServer({ port: 0, perMessageDeflate: false })
wss.on("connection", (ws) => {
  setTimeout(() => {
    const frame = JSON.stringify({ type: "agent_thinking", reasoning: "x".repeat(180), seq: 1 })
    gc?.()
    const before = process.memoryUsage()
    const N = 200_000
    for (let i = 0; i < N; i++) ws.send(frame)
    gc?.()
    const after = process.memoryUsage()
    const bytes = ws.bufferedAmount
    console.log("frames", N, "frame bytes", frame.length, "bufferedAmount MiB", (bytes / 2**20).toFixed(1))
    for (const k of ["rss", "heapUsed", "external", "arrayBuffers"] as const) console.log(k, ((after[k] - before[k]) / 2**20).toFixed(1), "MiB")
    console.log("overhead per frame (rss-buffered)/N", ((after.rss - before.rss - bytes) / N).toFixed(0), "B")
    process.exit(0)
  }, 200)
})
wss.on("listening", () => {
  const port = (wss.address() as { port: number }).port
  const c = new WebSocket(`ws://127.0.0.1:${port}`)
  c.on("open", () => (c as unknown as { _socket: { pause(): void } })._socket.pause())
})
