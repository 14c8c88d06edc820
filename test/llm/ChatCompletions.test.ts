/**
 * The Chat Completions stream decoding: unit cases for the chunk decoder, and
 * a property over the real layer: however the endpoint's bytes are split
 * (mid-event, mid-JSON, mid-UTF-8 character), the answer and tool calls come
 * out the same.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Stream } from "effect"
import { LanguageModel } from "effect/ai"
import * as fc from "fast-check"
import { BuiltinToolkit, BuiltinToolkitLayer } from "../../src/agents/AssistantTools.ts"
import { makeChunkDecoder } from "../../src/llm/ChatCompletions.ts"
import * as OpenAiCompatible from "../../src/layers/OpenAiCompatible.ts"
import * as Fake from "../fixtures/fakeOpenAi.ts"

describe("ChatCompletions.makeChunkDecoder", () => {
  it("merges tool-call fragments by index and emits them, parsed, at the end", () => {
    const decoder = makeChunkDecoder("r")
    decoder.feed(JSON.stringify({ choices: [{ index: 0, delta: { tool_calls: [{ index: 1, id: "b", function: { name: "current_time", arguments: "{" } }] } }] }))
    decoder.feed(JSON.stringify({ choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: "a", function: { name: "calc", arguments: "{\"x\":" } }] } }] }))
    decoder.feed(JSON.stringify({ choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: "1}" } }, { index: 1, function: { arguments: "}" } }] } }] }))
    decoder.feed(JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: "tool_calls" }] }))
    expect(decoder.feed("[DONE]")).toEqual([])
    expect(decoder.done()).toBe(true)
    const end = decoder.end()
    expect(Array.isArray(end) && end.map((p) => p.type === "tool-call" ? [p.id, p.name, p.params] : p.type)).toEqual([
      ["a", "calc", { x: 1 }],
      ["b", "current_time", {}],
      "finish"
    ])
  })

  it("a stream that ends without finish_reason or [DONE] is incomplete", () => {
    const decoder = makeChunkDecoder("r")
    decoder.feed(JSON.stringify(Fake.contentChunk("half an ans")))
    const end = decoder.end()
    expect(Array.isArray(end)).toBe(false)
  })

  it("an error object in the stream is the provider's error; context length is recognised", () => {
    const decoder = makeChunkDecoder("r")
    const result = decoder.feed(JSON.stringify({ error: { message: "prompt is too long", code: "context_length_exceeded" } }))
    expect(!Array.isArray(result) && result._tag).toBe("InvalidRequestError")
  })

  it("tool-call arguments that are JSON but not an object are refused", () => {
    const decoder = makeChunkDecoder("r")
    decoder.feed(JSON.stringify({ choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: "a", function: { name: "calc", arguments: "[1,2]" } }] }, finish_reason: "tool_calls" }] }))
    const end = decoder.end()
    expect(!Array.isArray(end) && end._tag).toBe("InvalidResponseError")
  })
})

/** Writes `body` in pieces cut at `cuts` (byte offsets), yielding to the event loop between pieces. */
const piecewise = (body: Buffer, cuts: ReadonlyArray<number>): Fake.Handler => async (x) => {
  x.startStream()
  const points = [...new Set(cuts.map((c) => c % (body.length + 1)))].sort((a, b) => a - b)
  let from = 0
  for (const to of [...points, body.length]) {
    if (to > from) {
      x.res.write(body.subarray(from, to))
      await new Promise((resolve) => setImmediate(resolve))
    }
    from = to
  }
  x.res.end()
}

const sseBody = (deltas: ReadonlyArray<string>, expression: string) =>
  Buffer.from(
    [
      ...deltas.map((d) => Fake.contentChunk(d)),
      { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: "c1", type: "function", function: { name: "calculate", arguments: JSON.stringify({ expression }) } }] } }] },
      Fake.finishChunk("tool_calls")
    ].map((c) => `data: ${JSON.stringify(c)}\n\n`).join("") + "data: [DONE]\n\n"
  )

/** Streams the body split at `cuts` through the real layer and checks the parts. */
const roundTrip = (deltas: ReadonlyArray<string>, expression: string, cuts: ReadonlyArray<number>) =>
  Effect.gen(function*() {
    const server = yield* Fake.start([piecewise(sseBody(deltas, expression), cuts)])
    const parts = yield* LanguageModel.streamText({
      prompt: "hi",
      toolkit: BuiltinToolkit,
      disableToolCallResolution: true,
      toolCallValidation: "deferred"
    }).pipe(
      Stream.runCollect,
      Effect.provide(Layer.mergeAll(
        OpenAiCompatible.layerNode({ baseUrl: server.baseUrl, model: "m", timeoutMs: 5_000 }),
        BuiltinToolkitLayer
      ))
    )
    const text = parts.flatMap((p) => (p.type === "text-delta" ? [p.delta] : [])).join("")
    expect(text).toBe(deltas.join(""))
    const calls = parts.flatMap((p) => (p.type === "tool-call" ? [[p.id, p.name, p.params]] : []))
    expect(calls).toEqual([["c1", "calculate", { expression }]])
    expect(parts.at(-1)).toMatchObject({ type: "finish", reason: "tool-calls" })
  }).pipe(Effect.scoped)

describe("OpenAiCompatible over a fake endpoint", () => {
  it.live("property: the parts do not depend on how the bytes are split", () =>
    Effect.promise(() =>
      fc.assert(
        fc.asyncProperty(
          fc.array(fc.string({ unit: "grapheme", minLength: 1, maxLength: 8 }), { maxLength: 12 }),
          fc.string({ unit: "grapheme", maxLength: 10 }),
          fc.array(fc.nat(), { maxLength: 20 }),
          (deltas, expression, cuts) => Effect.runPromise(roundTrip(deltas, expression, cuts))
        ),
        { numRuns: 40 }
      )
    ), 60_000)

  // regression (seed 565285178): a 4-byte UTF-8 character cut between two reads, found when
  // the body was decoded chunk by chunk without `stream: true`
  it.live("a multi-byte character split across reads", () => roundTrip(["𐀀𐀀𐀀𐀀𐀀", "ࠀ"], "", [217753407, 1958093637]))
})
