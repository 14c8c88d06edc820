/**
 * The OpenAI Chat Completions wire format, without any I/O: a prompt to the
 * request body, and the streamed `data:` payloads back to effect/ai response
 * parts. Used by `layers/OpenAiCompatible.ts`; pure, so it is tested directly.
 *
 * Streaming format (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp, LM Studio):
 * each SSE `data:` line holds a `chat.completion.chunk` whose
 * `choices[0].delta` carries `content`, `reasoning_content` (or `reasoning`)
 * and `tool_calls` fragments (arguments as JSON text split anywhere, merged by
 * `index`); `finish_reason` ends the choice; `data: [DONE]` ends the stream.
 *
 * @module
 */
import { AiError, type Prompt, type Response, Tool } from "effect/ai"

// ---------------------------------------------------------------------------
// request

/** One message of the request body. */
export type ChatMessage =
  | { readonly role: "system" | "user"; readonly content: string }
  | {
    readonly role: "assistant"
    readonly content: string | null
    readonly tool_calls?: ReadonlyArray<{
      readonly id: string
      readonly type: "function"
      readonly function: { readonly name: string; readonly arguments: string }
    }>
  }
  | { readonly role: "tool"; readonly tool_call_id: string; readonly content: string }

const textOf = (parts: ReadonlyArray<{ readonly type: string; readonly text?: string }>): string =>
  parts.map((p) => (p.type === "text" ? p.text ?? "" : "")).join("")

const resultText = (part: Prompt.ToolResultPart): string => {
  const value = part.result
  return typeof value === "string" ? value : JSON.stringify(value ?? null)
}

/** The prompt as Chat Completions messages (files and reasoning are not sent). */
export const toMessages = (prompt: Prompt.Prompt): Array<ChatMessage> => {
  const messages: Array<ChatMessage> = []
  for (const message of prompt.content) {
    switch (message.role) {
      case "system":
        messages.push({ role: "system", content: message.content })
        break
      case "user":
        messages.push({ role: "user", content: textOf(message.content) })
        break
      case "assistant": {
        const calls = message.content.flatMap((p) =>
          p.type === "tool-call" && !p.providerExecuted
            ? [{ id: p.id, type: "function" as const, function: { name: p.name, arguments: JSON.stringify(p.params ?? {}) } }]
            : []
        )
        const text = textOf(message.content)
        messages.push(
          calls.length > 0 ? { role: "assistant", content: text === "" ? null : text, tool_calls: calls } : { role: "assistant", content: text }
        )
        break
      }
      case "tool":
        for (const part of message.content) {
          if (part.type === "tool-result") messages.push({ role: "tool", tool_call_id: part.id, content: resultText(part) })
        }
        break
    }
  }
  return messages
}

/** The request body for `POST {base}/chat/completions` with streaming on. */
export const requestBody = (options: {
  readonly model: string
  readonly prompt: Prompt.Prompt
  readonly tools: ReadonlyArray<Tool.Any>
  readonly toolChoice: unknown
}): Record<string, unknown> => {
  const body: Record<string, unknown> = {
    model: options.model,
    messages: toMessages(options.prompt),
    stream: true,
    stream_options: { include_usage: true }
  }
  if (options.tools.length > 0) {
    body.tools = options.tools.map((tool) => ({
      type: "function",
      function: {
        name: tool.name,
        ...(Tool.getDescription(tool) === undefined ? {} : { description: Tool.getDescription(tool) }),
        parameters: Tool.getJsonSchema(tool)
      }
    }))
    const choice = options.toolChoice
    body.tool_choice = typeof choice === "object" && choice !== null && "tool" in choice
      ? { type: "function", function: { name: String((choice as { tool: unknown }).tool) } }
      : typeof choice === "object" && choice !== null && "oneOf" in choice
      ? ((choice as { mode?: string }).mode ?? "auto")
      : choice
  }
  return body
}

// ---------------------------------------------------------------------------
// streamed response

/** Marks an `AiError` reason with the agentwire error code it must map to (see `LlmErrorCode.ts`). */
export const pinCode = (code: string) => ({ agentwire_code: code })

const badResponse = (description: string): AiError.AiErrorReason =>
  new AiError.InvalidResponseError({ description, metadata: pinCode("LLM_BAD_RESPONSE") })

const CONTEXT_TOO_LONG = /context[_ ]?(length|window|size)|maximum context|too many tokens|prompt is too long|exceed_context/i

/** Classifies a provider's `{error: {message, type, code}}` object (in a stream or an error body). */
export const providerError = (error: unknown, status?: number): AiError.AiErrorReason => {
  const e = typeof error === "object" && error !== null ? (error as Record<string, unknown>) : {}
  const message = typeof e.message === "string" ? e.message : typeof error === "string" ? error : ""
  const code = typeof e.code === "string" ? e.code : typeof e.type === "string" ? e.type : ""
  const description = `${status === undefined ? "the model reported an error" : `HTTP ${status}`}${message === "" ? "" : `: ${message.slice(0, 300)}`}`
  if (CONTEXT_TOO_LONG.test(code) || CONTEXT_TOO_LONG.test(message)) {
    return new AiError.InvalidRequestError({ description, constraint: "context_length", metadata: pinCode("LLM_CONTEXT_TOO_LONG") })
  }
  return new AiError.InternalProviderError({ description, metadata: pinCode("LLM_UNAVAILABLE") })
}

const FINISH: Record<string, Response.FinishReason> = {
  stop: "stop",
  length: "length",
  tool_calls: "tool-calls",
  function_call: "tool-calls",
  content_filter: "content-filter"
}

/**
 * A whole (non-streamed) `chat.completion` body as one streamed chunk, for
 * endpoints that ignore `stream: true`: `choices[i].message` becomes the
 * `delta`. Text that is not JSON is passed through (the decoder refuses it).
 */
export const completionAsChunk = (body: string): string => {
  let parsed: unknown
  try {
    parsed = JSON.parse(body)
  } catch {
    return body
  }
  if (typeof parsed !== "object" || parsed === null || !Array.isArray((parsed as { choices?: unknown }).choices)) return body
  const record = parsed as { choices: ReadonlyArray<Record<string, unknown>> }
  return JSON.stringify({
    ...record,
    choices: record.choices.map(({ message, ...choice }) => ({ ...choice, delta: message }))
  })
}

interface PendingCall {
  id: string | undefined
  name: string
  args: string
}

/**
 * A stateful decoder of one streamed response. `feed` takes each SSE `data`
 * payload in order and returns the parts it completes, or the reason the
 * stream is unusable; `end` is called when the body ends and returns the
 * closing parts (tool calls, finish) or why the stream is incomplete.
 */
export interface ChunkDecoder {
  /** True once `[DONE]` was fed: nothing more is expected. */
  readonly done: () => boolean
  readonly feed: (data: string) => Array<Response.StreamPartEncoded> | AiError.AiErrorReason
  readonly end: () => Array<Response.StreamPartEncoded> | AiError.AiErrorReason
}

/** A fresh decoder; `messageId` names the text and reasoning parts. */
/** Longest answer (or reasoning) one model turn may stream, in characters: past it the turn fails with `LLM_BAD_RESPONSE`. */
export const MAX_TURN_CHARS = 1_000_000

/** Longest tool-call arguments, in characters. */
export const MAX_TOOL_ARGUMENT_CHARS = 256 * 1024

/** Deepest nesting of tool-call arguments (objects and arrays). */
export const MAX_TOOL_ARGUMENT_DEPTH = 64

/** Tool calls one model turn may make. */
export const MAX_TOOL_CALLS_PER_TURN = 64

/** How deep `json` nests `[` and `{` (outside strings); a single linear pass. */
const nestingOf = (json: string): number => {
  let depth = 0
  let max = 0
  let inString = false
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i)
    if (inString) {
      if (c === 92) i++ // backslash: skip the escaped character
      else if (c === 34) inString = false
    } else if (c === 34) inString = true
    else if (c === 91 || c === 123) max = Math.max(max, ++depth)
    else if (c === 93 || c === 125) depth--
  }
  return max
}

export const makeChunkDecoder = (messageId: string): ChunkDecoder => {
  let streamedChars = 0
  let textOpen = false
  let reasoningOpen = false
  let finishReason: string | undefined
  let usage: { prompt_tokens?: number; completion_tokens?: number; total_tokens?: number } | undefined
  let done = false
  let ended = false
  const calls = new Map<number, PendingCall>()
  const textId = `${messageId}`
  const reasoningId = `${messageId}:reasoning`

  const close = (out: Array<Response.StreamPartEncoded>) => {
    if (reasoningOpen) out.push({ type: "reasoning-end", id: reasoningId })
    if (textOpen) out.push({ type: "text-end", id: textId })
    reasoningOpen = false
    textOpen = false
  }

  const finish = (): Array<Response.StreamPartEncoded> | AiError.AiErrorReason => {
    const out: Array<Response.StreamPartEncoded> = []
    close(out)
    for (const [index, call] of [...calls.entries()].sort(([a], [b]) => a - b)) {
      if (call.name === "") return badResponse(`tool call #${index} has no function name`)
      if (call.args.length > MAX_TOOL_ARGUMENT_CHARS) return badResponse(`the arguments of tool call ${call.name} are longer than ${MAX_TOOL_ARGUMENT_CHARS} characters`)
      if (nestingOf(call.args) > MAX_TOOL_ARGUMENT_DEPTH) return badResponse(`the arguments of tool call ${call.name} nest deeper than ${MAX_TOOL_ARGUMENT_DEPTH} levels`)
      let params: unknown
      try {
        params = call.args.trim() === "" ? {} : JSON.parse(call.args)
      } catch {
        return badResponse(`the arguments of tool call ${call.name} are not valid JSON: ${JSON.stringify(call.args.slice(0, 200))}`)
      }
      if (typeof params !== "object" || params === null || Array.isArray(params)) {
        return badResponse(`the arguments of tool call ${call.name} are not a JSON object`)
      }
      out.push({ type: "tool-call", id: call.id ?? `${messageId}:call:${index}`, name: call.name, params })
    }
    out.push({
      type: "finish",
      reason: (finishReason === undefined ? undefined : FINISH[finishReason]) ?? (calls.size > 0 ? "tool-calls" : finishReason === undefined ? "unknown" : "other"),
      usage: {
        inputTokens: { total: usage?.prompt_tokens },
        outputTokens: { total: usage?.completion_tokens }
      }
    })
    return out
  }

  const feed = (data: string): Array<Response.StreamPartEncoded> | AiError.AiErrorReason => {
    if (done) return []
    if (data.trim() === "[DONE]") {
      done = true
      return []
    }
    let chunk: unknown
    try {
      chunk = JSON.parse(data)
    } catch {
      return badResponse(`a stream event is not JSON: ${JSON.stringify(data.slice(0, 200))}`)
    }
    if (typeof chunk !== "object" || chunk === null) return badResponse("a stream event is not a JSON object")
    const record = chunk as Record<string, unknown>
    if (record.error !== undefined && record.error !== null) return providerError(record.error)
    if (typeof record.usage === "object" && record.usage !== null) usage = record.usage as typeof usage
    const choices = record.choices
    if (choices === undefined || choices === null) return []
    if (!Array.isArray(choices)) return badResponse("`choices` is not an array")
    const out: Array<Response.StreamPartEncoded> = []
    for (const choice of choices as ReadonlyArray<unknown>) {
      if (typeof choice !== "object" || choice === null) return badResponse("a choice is not an object")
      const c = choice as Record<string, unknown>
      if (typeof c.index === "number" && c.index !== 0) continue
      const delta = (typeof c.delta === "object" && c.delta !== null ? c.delta : {}) as Record<string, unknown>
      const reasoning = typeof delta.reasoning_content === "string"
        ? delta.reasoning_content
        : typeof delta.reasoning === "string"
        ? delta.reasoning
        : ""
      streamedChars += reasoning.length + (typeof delta.content === "string" ? delta.content.length : 0)
      if (streamedChars > MAX_TURN_CHARS) return badResponse(`the model's answer is longer than ${MAX_TURN_CHARS} characters in one turn`)
      if (reasoning !== "") {
        if (!reasoningOpen) {
          reasoningOpen = true
          out.push({ type: "reasoning-start", id: reasoningId })
        }
        out.push({ type: "reasoning-delta", id: reasoningId, delta: reasoning })
      }
      if (typeof delta.content === "string" && delta.content !== "") {
        if (reasoningOpen) {
          reasoningOpen = false
          out.push({ type: "reasoning-end", id: reasoningId })
        }
        if (!textOpen) {
          textOpen = true
          out.push({ type: "text-start", id: textId })
        }
        out.push({ type: "text-delta", id: textId, delta: delta.content })
      }
      if (delta.tool_calls !== undefined && delta.tool_calls !== null) {
        if (!Array.isArray(delta.tool_calls)) return badResponse("`tool_calls` is not an array")
        for (const raw of delta.tool_calls as ReadonlyArray<unknown>) {
          if (typeof raw !== "object" || raw === null) return badResponse("a tool call is not an object")
          const t = raw as Record<string, unknown>
          const index = typeof t.index === "number" ? t.index : calls.size
          if (!calls.has(index) && calls.size >= MAX_TOOL_CALLS_PER_TURN) return badResponse(`more than ${MAX_TOOL_CALLS_PER_TURN} tool calls in one turn`)
          const fn = (typeof t.function === "object" && t.function !== null ? t.function : {}) as Record<string, unknown>
          const call = calls.get(index) ?? { id: undefined, name: "", args: "" }
          if (typeof t.id === "string" && t.id !== "") call.id = t.id
          if (typeof fn.name === "string") call.name += fn.name
          if (typeof fn.arguments === "string") call.args += fn.arguments
          else if (typeof fn.arguments === "object" && fn.arguments !== null) call.args += JSON.stringify(fn.arguments)
          calls.set(index, call)
        }
      }
      if (typeof c.finish_reason === "string" && c.finish_reason !== "") finishReason = c.finish_reason
    }
    return out
  }

  return {
    done: () => done,
    feed,
    end: () => {
      if (ended) return []
      ended = true
      if (!done && finishReason === undefined) {
        return new AiError.InternalProviderError({
          description: "the model's stream ended before the answer was complete (connection cut mid-way)",
          metadata: pinCode("LLM_UNAVAILABLE")
        })
      }
      return finish()
    }
  }
}
