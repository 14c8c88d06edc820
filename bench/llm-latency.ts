/**
 * Added latency per streamed delta of the `assistant`: from the moment a
 * provider chunk is written by a fake OpenAI-compatible server to the moment
 * agentwire hands the matching `partial_result` frame to the user's
 * connection (`BridgeConnection.send`, i.e. the frame written to the socket
 * layer), minus the same measurement for a bare HTTP client reading the same
 * stream (the loopback transport alone).
 *
 * Setup, all in one process (one event loop, so clocks agree):
 * - a node:http server streams N chunks `data: {"choices":[{"delta":{"content":"<i> "}}]}`,
 *   `GAP_MS` apart, recording `performance.now()` right after each `res.write`;
 * - baseline: a bare `node:http` client reads the body; each chunk's indices are
 *   matched to their write times;
 * - agentwire: the real `assistant` over `OpenAiCompatible.layerNode` (undici),
 *   the in-memory `WebSocketBridge` with one registered connection whose `send`
 *   records `performance.now()` when called, coalescing 0 (one event per chunk).
 * Both paths read the same kind of stream; the first WARMUP deltas are dropped.
 *
 * argv: [chunks = 2000] [gap ms = 2]. Prints a JSON summary (µs).
 *
 * @module
 */
import { Effect, Layer } from "effect"
import { createServer, request, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import * as Assistant from "../src/agents/Assistant.ts"
import { BuiltinToolkitLayer } from "../src/agents/AssistantTools.ts"
import * as AgentRegistryLayer from "../src/layers/AgentRegistry.ts"
import * as AgentRuntime from "../src/layers/AgentRuntime.ts"
import * as ConversationStoreMemory from "../src/layers/ConversationStoreMemory.ts"
import * as OpenAiCompatible from "../src/layers/OpenAiCompatible.ts"
import { ExecutionEngineFactory } from "../src/services/ExecutionEngineFactory.ts"
import * as UserExecutionContext from "../src/services/UserExecutionContext.ts"
import { WebSocketBridge } from "../src/services/WebSocketBridge.ts"

const CHUNKS = Number(process.argv[2] ?? "2000")
const GAP_MS = Number(process.argv[3] ?? "2")
const WARMUP = Math.min(200, Math.floor(CHUNKS / 10))

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** A server streaming CHUNKS deltas; `sent[i]` is when delta i was written. */
const startServer = async (sent: Array<number>): Promise<{ server: Server; url: string }> => {
  const server = createServer((req, res) => {
    req.resume()
    req.on("end", async () => {
      res.writeHead(200, { "content-type": "text/event-stream" })
      for (let i = 0; i < CHUNKS; i++) {
        res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: `${i} ` }, finish_reason: null }] })}\n\n`)
        sent[i] = performance.now()
        await sleep(GAP_MS)
      }
      res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] })}\n\ndata: [DONE]\n\n`)
      res.end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1` }
}

/** Records, for each delta index found in `text`, the time `now`. */
const stamp = (text: string, now: number, received: Array<number>) => {
  for (const match of text.matchAll(/"content":"(\d+) "|"delta":"((?:\d+ )+)"/g)) {
    const indices = (match[1] ?? match[2] ?? "").trim().split(" ")
    for (const i of indices) if (i !== "") received[Number(i)] ??= now
  }
}

const percentiles = (sent: ReadonlyArray<number>, received: ReadonlyArray<number>) => {
  const samples: Array<number> = []
  for (let i = WARMUP; i < CHUNKS; i++) {
    if (sent[i] !== undefined && received[i] !== undefined) samples.push((received[i]! - sent[i]!) * 1000)
  }
  samples.sort((a, b) => a - b)
  const at = (q: number) => Math.round(samples[Math.min(samples.length - 1, Math.floor(q * samples.length))]! * 10) / 10
  return { samples: samples.length, p50_us: at(0.5), p90_us: at(0.9), p99_us: at(0.99), max_us: Math.round(samples.at(-1)! * 10) / 10 }
}

const baseline = async () => {
  const sent: Array<number> = []
  const received: Array<number> = []
  const { server, url } = await startServer(sent)
  await new Promise<void>((resolve, reject) => {
    const req = request(`${url}/chat/completions`, { method: "POST" }, (res) => {
      res.on("data", (chunk: Buffer) => stamp(chunk.toString(), performance.now(), received))
      res.on("end", resolve)
    })
    req.on("error", reject)
    req.end("{}")
  })
  server.close()
  return percentiles(sent, received)
}

const agentwire = async () => {
  const sent: Array<number> = []
  const received: Array<number> = []
  const { server, url } = await startServer(sent)
  const runtime = AgentRuntime.layer.pipe(
    Layer.provide(AgentRegistryLayer.layer([Assistant.assistant({ coalesceMs: 0 })])),
    Layer.provide(BuiltinToolkitLayer),
    Layer.provide(ConversationStoreMemory.layer()),
    Layer.provide(OpenAiCompatible.layerNode({ baseUrl: url, model: "bench", timeoutMs: 30_000 }))
  )
  const outcome = await Effect.runPromise(Effect.gen(function*() {
    const bridge = yield* WebSocketBridge
    const engines = yield* ExecutionEngineFactory
    yield* bridge.register({
      id: "conn-1",
      user_id: "bench",
      // the frame as the socket would get it: time first, then find which deltas it carries
      send: (frame) => stamp(frame, performance.now(), received)
    })
    const context = yield* UserExecutionContext.make({ user_id: "bench" })
    return yield* Effect.scoped(Effect.flatMap(engines.createForUser(context), (engine) => engine.run("assistant", "count")))
  }).pipe(Effect.scoped, Effect.provide(runtime)))
  server.close()
  if (outcome.status !== "completed") throw new Error(`run ${outcome.status}: ${outcome.final_response}`)
  return percentiles(sent, received)
}

const base = await baseline()
const full = await agentwire()
console.log(JSON.stringify(
  {
    chunks: CHUNKS,
    gap_ms: GAP_MS,
    warmup_dropped: WARMUP,
    baseline_node_http_read: base,
    agentwire_chunk_to_frame: full,
    added_p50_us: Math.round((full.p50_us - base.p50_us) * 10) / 10,
    added_p99_us: Math.round((full.p99_us - base.p99_us) * 10) / 10
  },
  null,
  2
))
