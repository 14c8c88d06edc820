/**
 * `assistant`: a language model agent with tools, on effect/ai.
 *
 * The loop, per model turn (a "step"):
 * 1. stream the conversation to the `LanguageModel`; the answer text goes out
 *    as `partial_result {message_id, delta}` (one `message_id` per turn,
 *    coalesced: at most one event per message every `coalesceMs`), reasoning
 *    text (when the provider streams it) as `agent_thinking`;
 * 2. when the model asks for tools, run them all concurrently, each through
 *    `ctx.tool` (so each sends `tool_executing` with the model's arguments and
 *    `tool_completed` with its result), feed the results back, next step;
 * 3. when it answers without tools, that turn's text is the run's
 *    `final_response`: exactly the concatenation of that `message_id`'s deltas
 *    (an empty answer is sent as one empty delta, so the rule holds).
 *
 * A failed tool call (bad arguments, unknown tool, the handler's failure) is
 * reported to the model as the tool's result, and the loop goes on. A model
 * still asking for tools after `maxSteps` turns fails with `LLM_MAX_STEPS`.
 * Provider failures fail with the codes of `llm/LlmErrorCode.ts`.
 *
 * Conversation memory (root runs only, `depth` 0): the run sees the messages
 * of its `(user_id, thread_id)` as they stood when it started
 * (`ConversationStore.load`, without its own request). The engine records
 * every root run in the store: its request when it starts, its answer when it
 * completes. A store that cannot answer degrades the run to
 * no history (logged), it does not fail it. A delegated assistant (depth ≥ 1)
 * sees only its request.
 *
 * @module
 */
import { type Duration, Effect, Stream } from "effect"
import { AiError, LanguageModel, Prompt, type Tool, type Toolkit } from "effect/ai"
import { BuiltinToolkit } from "./AssistantTools.ts"
import * as DeltaCoalescer from "../llm/DeltaCoalescer.ts"
import * as LlmErrorCode from "../llm/LlmErrorCode.ts"
import * as Agent from "../services/Agent.ts"
import { ConversationStore } from "../services/ConversationStore.ts"

/** Default system prompt. */
export const DEFAULT_SYSTEM_PROMPT =
  "You are a helpful assistant. Use the tools when they help: `calculate` for any arithmetic, `current_time` for the date or time. Answer concisely."

export interface AssistantOptions<Tools extends Record<string, Tool.Any>> {
  /** Agent name (default `assistant`). */
  readonly name?: string | undefined
  readonly description?: string | undefined
  /** The tools the model may call; their handlers are required from the context. */
  readonly toolkit: Toolkit.Toolkit<Tools>
  readonly systemPrompt?: string | undefined
  /** Model turns per run (default 8). */
  readonly maxSteps?: number | undefined
  /** At most one `partial_result` per message this often, ms (default 20; 0 = every chunk). */
  readonly coalesceMs?: number | undefined
  /** Longest a single tool call may run (default 30 seconds). */
  readonly toolTimeout?: Duration.Input | undefined
}

/** What an assistant over `Tools` requires: the model, the store and the tools' handlers and services. */
export type AssistantServices<Tools extends Record<string, Tool.Any>> =
  | LanguageModel.LanguageModel
  | ConversationStore
  | Tool.HandlersFor<Tools>
  | Tool.HandlerServices<Tools[keyof Tools]>

const messageId = () => `msg_${crypto.randomUUID().replaceAll("-", "")}`

const describeFailure = (error: unknown): string => {
  if (AiError.isAiError(error)) return error.reason.message
  if (typeof error === "string") return error
  if (typeof error === "object" && error !== null && "message" in error && typeof error.message === "string") return error.message
  try {
    return JSON.stringify(error)
  } catch {
    return String(error)
  }
}

const asParameters = (params: unknown): Readonly<Record<string, unknown>> =>
  typeof params === "object" && params !== null && !Array.isArray(params) ? (params as Record<string, unknown>) : { value: params }

/** An assistant agent over `options.toolkit`. */
export const make = <Tools extends Record<string, Tool.Any>>(options: AssistantOptions<Tools>): Agent.Agent<AssistantServices<Tools>> => {
  const maxSteps = options.maxSteps ?? 8
  const coalesceMs = options.coalesceMs ?? 20
  const toolTimeout = options.toolTimeout ?? "30 seconds"
  const system = options.systemPrompt ?? DEFAULT_SYSTEM_PROMPT

  return Agent.make<AssistantServices<Tools>>(options.name ?? "assistant", {
    description: options.description ?? "Answers with a language model, streaming the answer and calling its tools",
    run: (request, ctx) =>
      Effect.gen(function*() {
        const store = yield* ConversationStore
        const key = { user_id: ctx.user_id, thread_id: ctx.thread_id }
        const remember = ctx.depth === 0
        // history unavailable: answer without it (history degrades, the run does not fail)
        const history = remember
          ? yield* store.load(key, { exceptRun: ctx.run_id }).pipe(
            Effect.catch((e) => Effect.as(Effect.logWarning("conversation history unavailable").pipe(Effect.annotateLogs({ error: e.message })), []))
          )
          : []
        const handlers = yield* options.toolkit

        /** Runs one tool call through ctx.tool; a failure becomes a failed result for the model. */
        const runTool = (call: { readonly id: string; readonly name: string; readonly params: unknown }) => {
          const execute = handlers.handle(call.name as keyof Tools, call.params as never, call.id).pipe(
            Effect.flatMap((results) => Stream.runLast(Stream.filter(results, (r) => !r.preliminary))),
            Effect.flatMap((last) => {
              if (last._tag === "None") return Effect.fail(`${call.name} returned nothing`)
              return last.value.isFailure ? Effect.fail(last.value.encodedResult) : Effect.succeed(last.value.encodedResult)
            })
          )
          return ctx.tool(call.name, asParameters(call.params), execute, { timeout: toolTimeout, describeError: describeFailure }).pipe(
            Effect.map((result) => ({ isFailure: false, result })),
            Effect.catchTag("ToolError", (error) => Effect.succeed({ isFailure: true, result: { error: error.message } })),
            Effect.map(({ isFailure, result }) => Prompt.makePart("tool-result", { id: call.id, name: call.name, isFailure, result, providerExecuted: false }))
          )
        }

        /** One model turn: streams it out, returns its text and tool calls. */
        const turn = (prompt: Prompt.Prompt, step: number) =>
          Effect.scoped(Effect.gen(function*() {
            const message_id = messageId()
            const answer = yield* DeltaCoalescer.make(coalesceMs, (delta) => ctx.partial(message_id, delta))
            const reasoning = yield* DeltaCoalescer.make(coalesceMs, (text) => ctx.think(text, step))
            let text = ""
            const calls: Array<{ readonly id: string; readonly name: string; readonly params: unknown }> = []
            yield* LanguageModel.streamText({
              prompt,
              toolkit: handlers,
              disableToolCallResolution: true,
              toolCallValidation: "deferred"
            }).pipe(
              Stream.runForEach((part) => {
                switch (part.type) {
                  case "text-delta":
                    text += part.delta
                    return answer.push(part.delta)
                  case "reasoning-delta":
                    return reasoning.push(part.delta)
                  case "reasoning-end":
                    return reasoning.flush
                  case "tool-call":
                    if (!part.providerExecuted) calls.push({ id: part.id, name: part.name, params: part.params })
                    return Effect.void
                  default:
                    return Effect.void
                }
              }),
              Effect.mapError((error) => {
                const { code, message } = LlmErrorCode.describe(error)
                return new Agent.AgentError({ code, message })
              }),
              // on a provider failure the client still gets every delta the model sent before it
              Effect.tapError(() => Effect.andThen(reasoning.flush, answer.flush))
            )
            yield* reasoning.flush
            yield* answer.flush
            return { message_id, text, calls }
          }))

        const loop = (prompt: Prompt.Prompt, step: number): Effect.Effect<string, Agent.AgentError, AssistantServices<Tools>> =>
          Effect.gen(function*() {
            const { calls, message_id, text } = yield* turn(prompt, step)
            if (calls.length === 0) {
              // the rule "final_response = the concatenation of the last message's deltas" holds for an empty answer too
              if (text === "") yield* ctx.partial(message_id, "")
              return text
            }
            if (step >= maxSteps) {
              return yield* new Agent.AgentError({
                code: "LLM_MAX_STEPS",
                message: `the model still asked for tools after ${maxSteps} steps (AGENTWIRE_LLM_MAX_STEPS)`
              })
            }
            const results = yield* Effect.forEach(calls, runTool, { concurrency: "unbounded" })
            const next = Prompt.concat(prompt, [
              {
                role: "assistant",
                content: [
                  ...(text === "" ? [] : [{ type: "text" as const, text }]),
                  ...calls.map((call) => ({ type: "tool-call" as const, id: call.id, name: call.name, params: call.params }))
                ]
              },
              { role: "tool", content: results }
            ])
            return yield* loop(next, step + 1)
          })

        const prompt = Prompt.make([
          { role: "system", content: system },
          ...history.map((m) => ({ role: m.role, content: m.content })),
          { role: "user", content: request }
        ])
        return yield* loop(prompt, 1)
      })
  })
}

/** `assistant` with the built-in tools (`calculate`, `current_time`). */
export const assistant = (options: Omit<AssistantOptions<Toolkit.Tools<typeof BuiltinToolkit>>, "toolkit"> = {}) =>
  make({
    description: "Answers with a language model, streaming the answer and calling tools (calculate, current_time)",
    ...options,
    toolkit: BuiltinToolkit
  })
