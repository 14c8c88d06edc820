/**
 * A `LanguageModel` (effect/ai) over any OpenAI-compatible Chat Completions
 * endpoint: OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp server, LM Studio.
 *
 * Kept small on purpose, so that the official provider package can replace it
 * once a build for effect 4.1 ships. `POST {baseUrl}/chat/completions` with
 * `stream: true`; the answer is streamed as effect/ai parts (text, reasoning
 * from `reasoning_content`, tool calls, finish).
 *
 * Failures are `AiError`s whose reason carries the agentwire code in
 * `metadata.agentwire_code` (see `llm/LlmErrorCode.ts`):
 * - 401/403: `AuthenticationError` (`LLM_AUTH`); the response body is not kept;
 * - 429: `RateLimitError` (`LLM_RATE_LIMITED`), retried after `Retry-After`
 *   (or `retry-after-ms`) when that is at most `maxRetryAfterMs`;
 * - 5xx, connection refused or reset: `LLM_UNAVAILABLE`, retried with
 *   exponential backoff (`baseDelayMs` doubling, with jitter, up to `maxDelayMs`);
 * - no byte for `timeoutMs` (waiting for headers or between body chunks):
 *   `LLM_TIMEOUT`, not retried;
 * - a malformed stream or tool-call arguments that are not a JSON object:
 *   `LLM_BAD_RESPONSE`; a context-length refusal: `LLM_CONTEXT_TOO_LONG`;
 *   other 4xx: `LLM_REQUEST_REJECTED`.
 *
 * **Retries happen only before the response is accepted**, that is before the
 * first byte of the answer, so a retry never repeats a delta a client already
 * got. A stream cut mid-way fails (`LLM_UNAVAILABLE`) and is not retried.
 * At most `maxRetries` retries (default 2) per request.
 *
 * Interrupting the stream (a stopped run) aborts the HTTP request: the socket
 * is closed and the endpoint sees the disconnect. The API key is sent only in
 * the `Authorization` header; it is kept `Redacted` and scrubbed from any text
 * the endpoint sends back before that text can reach an error or a log.
 *
 * @module
 */
import { NodeHttpClient } from "@effect/platform-node"
import { Duration, Effect, Layer, Option, Redacted, Stream } from "effect"
import { AiError, LanguageModel, type Response } from "effect/ai"
import * as Sse from "effect/encoding/Sse"
import { HttpClient, type HttpClientError, HttpClientRequest, type HttpClientResponse } from "effect/http"
import { completionAsChunk, makeChunkDecoder, pinCode, providerError, requestBody } from "../llm/ChatCompletions.ts"
import type { LlmSettings } from "../services/AgentwireConfig.ts"

/** How the provider retries a request that failed before its answer started. */
export interface RetryOptions {
  /** Retries after the first attempt (default 2). */
  readonly maxRetries?: number | undefined
  /** First backoff for 5xx / connection failures, doubled each retry (default 500 ms). */
  readonly baseDelayMs?: number | undefined
  /** Longest backoff (default 8000 ms). */
  readonly maxDelayMs?: number | undefined
  /** A 429 asking to wait longer than this fails at once (default 30000 ms). */
  readonly maxRetryAfterMs?: number | undefined
}

export interface OpenAiCompatibleOptions {
  /** e.g. `http://127.0.0.1:11434/v1`; `/chat/completions` is appended. */
  readonly baseUrl: string
  readonly model: string
  /** Sent as `Authorization: Bearer …` when present. */
  readonly apiKey?: Redacted.Redacted<string> | undefined
  /** No byte for this long = `LLM_TIMEOUT` (default 60000 ms). */
  readonly timeoutMs?: number | undefined
  readonly retry?: RetryOptions | undefined
}

const MODULE = "OpenAiCompatible"

type Reason = AiError.AiErrorReason

const isReason = (u: unknown): u is Reason => AiError.isAiErrorReason(u)

/** `Retry-After` (seconds or an HTTP date) or `retry-after-ms`, in milliseconds. */
export const retryAfterMs = (headers: Readonly<Record<string, string | undefined>>, now = Date.now()): number | undefined => {
  const ms = headers["retry-after-ms"]
  if (ms !== undefined && /^\d+(\.\d+)?$/.test(ms.trim())) return Number(ms.trim())
  const value = headers["retry-after"]?.trim()
  if (value === undefined || value === "") return undefined
  if (/^\d+(\.\d+)?$/.test(value)) return Number(value) * 1000
  const date = Date.parse(value)
  return Number.isNaN(date) ? undefined : Math.max(0, date - now)
}

/** Builds the `LanguageModel`; requires an `HttpClient`. */
export const make = (options: OpenAiCompatibleOptions) =>
  Effect.gen(function*() {
    const client = yield* HttpClient.HttpClient
    const url = `${options.baseUrl.replace(/\/+$/, "")}/chat/completions`
    const timeoutMs = options.timeoutMs ?? 60_000
    const maxRetries = options.retry?.maxRetries ?? 2
    const baseDelayMs = options.retry?.baseDelayMs ?? 500
    const maxDelayMs = options.retry?.maxDelayMs ?? 8_000
    const maxRetryAfterMs = options.retry?.maxRetryAfterMs ?? 30_000
    const secret = options.apiKey === undefined ? undefined : Redacted.value(options.apiKey)

    /** Removes the key from text that came from the endpoint (some echo it in 401 bodies). */
    const scrub = (text: string): string => (secret === undefined || secret === "" ? text : text.replaceAll(secret, "[redacted]"))

    const timeoutReason = (phase: string): Reason =>
      new AiError.UnknownError({
        description: `no data from the model for ${timeoutMs} ms (${phase}; AGENTWIRE_LLM_TIMEOUT_MS)`,
        metadata: pinCode("LLM_TIMEOUT")
      })

    const transportReason = (error: HttpClientError.HttpClientError, phase: string): Reason => {
      const cause = (error.reason as { readonly cause?: unknown }).cause
      const code = typeof cause === "object" && cause !== null && "code" in cause ? String((cause as { code: unknown }).code) : undefined
      const detail = code ?? (cause instanceof Error ? cause.message : error.reason._tag)
      return new AiError.InternalProviderError({
        description: scrub(`cannot ${phase} the model endpoint ${url}: ${detail}`),
        metadata: pinCode("LLM_UNAVAILABLE")
      })
    }

    const base = HttpClientRequest.post(url).pipe(
      HttpClientRequest.setHeader("accept", "text/event-stream"),
      (request) => options.apiKey === undefined ? request : HttpClientRequest.bearerToken(request, options.apiKey)
    )

    /** The refusal in a non-2xx response. */
    const refusal = (response: HttpClientResponse.HttpClientResponse): Effect.Effect<Reason> => {
      const status = response.status
      if (status === 401 || status === 403) {
        // the body is dropped: some endpoints echo part of the key in it
        return Effect.succeed(
          new AiError.AuthenticationError({
            kind: status === 401 ? "InvalidKey" : "InsufficientPermissions",
            description: `HTTP ${status}: the model endpoint refused the credentials (AGENTWIRE_LLM_API_KEY)`,
            metadata: pinCode("LLM_AUTH")
          })
        )
      }
      return response.text.pipe(
        Effect.timeoutOrElse({ duration: timeoutMs, orElse: () => Effect.succeed("") }),
        Effect.orElseSucceed(() => ""),
        Effect.map((raw): Reason => {
          const text = scrub(raw)
          let body: unknown = text
          try {
            body = JSON.parse(text)
          } catch {
            // plain text body
          }
          const error = typeof body === "object" && body !== null && "error" in body ? (body as { error: unknown }).error : text.slice(0, 300)
          if (status === 429) {
            const after = retryAfterMs(response.headers)
            return new AiError.RateLimitError({
              ...(after === undefined ? {} : { retryAfter: Duration.millis(after) }),
              metadata: pinCode("LLM_RATE_LIMITED")
            })
          }
          const reason = providerError(error, status)
          if (status >= 500 || reason._tag === "InvalidRequestError") return reason
          return new AiError.InvalidRequestError({
            description: reason._tag === "InternalProviderError" ? reason.description : `HTTP ${status}`,
            metadata: pinCode("LLM_REQUEST_REJECTED")
          })
        })
      )
    }

    /** One attempt: the response once its status is 2xx, or the reason it is not. */
    const attempt = (request: HttpClientRequest.HttpClientRequest) =>
      client.execute(request).pipe(
        Effect.mapError((error) => transportReason(error, "reach")),
        Effect.timeoutOrElse({ duration: timeoutMs, orElse: () => Effect.fail(timeoutReason("waiting for the response")) }),
        Effect.flatMap((response) =>
          response.status >= 200 && response.status < 300 ? Effect.succeed(response) : Effect.flatMap(refusal(response), Effect.fail)
        )
      )

    /** The wait before retry number `n` (0-based) after `reason`, or undefined when it must not be retried. */
    const delayBefore = (reason: Reason, n: number): number | undefined => {
      if (n >= maxRetries) return undefined
      const code = (reason as { metadata?: Record<string, unknown> }).metadata?.agentwire_code
      if (reason._tag === "RateLimitError") {
        const after = reason.retryAfter === undefined ? undefined : Duration.toMillis(reason.retryAfter)
        if (after === undefined) return Math.min(maxDelayMs, baseDelayMs * 2 ** n)
        return after <= maxRetryAfterMs ? after : undefined
      }
      if (code === "LLM_UNAVAILABLE") {
        const backoff = Math.min(maxDelayMs, baseDelayMs * 2 ** n)
        return Math.round(backoff * (0.5 + Math.random() / 2))
      }
      return undefined
    }

    const send = (request: HttpClientRequest.HttpClientRequest) => {
      const loop = (n: number): Effect.Effect<HttpClientResponse.HttpClientResponse, Reason> =>
        attempt(request).pipe(Effect.catch((reason) => {
          const delay = delayBefore(reason, n)
          if (delay === undefined) return Effect.fail(reason)
          return Effect.logWarning("model request failed; retrying").pipe(
            Effect.annotateLogs({ reason: reason._tag, retry: n + 1, delay_ms: delay }),
            Effect.andThen(Effect.sleep(delay)),
            Effect.andThen(loop(n + 1))
          )
        }))
      return loop(0)
    }

    /** The reason with the key scrubbed out of its description: every reason built from the endpoint's text passes here. */
    const scrubReason = (reason: Reason): Reason => {
      const description = (reason as { readonly description?: unknown }).description
      if (secret === undefined || secret === "" || typeof description !== "string" || !description.includes(secret)) return reason
      const Class = reason.constructor as new(fields: object) => Reason
      const { _tag: _, ...fields } = reason as unknown as Record<string, unknown>
      return new Class({ ...fields, description: scrub(description) })
    }

    const fail = (method: string) => (reason: Reason) => AiError.make({ module: MODULE, method, reason: scrubReason(reason) })

    const streamText = (providerOptions: LanguageModel.ProviderOptions): Stream.Stream<Response.StreamPartEncoded, AiError.AiError> =>
      Stream.unwrap(Effect.gen(function*() {
        const body = requestBody({
          model: options.model,
          prompt: providerOptions.prompt,
          tools: providerOptions.tools,
          toolChoice: providerOptions.toolChoice
        })
        const request = HttpClientRequest.bodyText(base, JSON.stringify(body), "application/json")
        const response = yield* send(request)
        const decoder = makeChunkDecoder(`resp_${crypto.randomUUID().replaceAll("-", "")}`)
        if ((response.headers["content-type"] ?? "").includes("application/json")) {
          // an endpoint that ignored `stream: true` and sent the whole completion at once
          return Stream.fromEffect(response.text.pipe(
            Effect.timeoutOrElse({ duration: timeoutMs, orElse: () => Effect.fail(timeoutReason("reading the response")) }),
            Effect.mapError((error): Reason => (isReason(error) ? error : transportReason(error, "keep reading from"))),
            Effect.flatMap((body) => {
              const parts = decoder.feed(completionAsChunk(body))
              if (!Array.isArray(parts)) return Effect.fail(parts)
              const closing = decoder.end()
              return Array.isArray(closing) ? Effect.succeed([...parts, ...closing]) : Effect.fail(closing)
            })
          )).pipe(Stream.flattenIterable)
        }
        const text = new TextDecoder()
        let pending: Array<Response.StreamPartEncoded> = []
        let failure: Reason | undefined
        const parser = Sse.makeParser((event) => {
          if (failure !== undefined || event._tag !== "Event") return
          const parts = decoder.feed(event.data)
          if (Array.isArray(parts)) pending.push(...parts)
          else failure = parts
        })
        // the parts decoded from a chunk, and its failure if it had one: parts decoded before a bad
        // event in the same read still reach the client, then the stream fails
        interface Taken {
          readonly parts: ReadonlyArray<Response.StreamPartEncoded>
          readonly failure: Reason | undefined
        }
        const take = (chunk: string): Taken => {
          const tooLarge = parser.feed(chunk)
          if (tooLarge !== undefined) failure ??= new AiError.InvalidResponseError({ description: tooLarge.message, metadata: pinCode("LLM_BAD_RESPONSE") })
          const parts = pending
          pending = []
          return { parts, failure }
        }
        const emit = (taken: Taken): Stream.Stream<Response.StreamPartEncoded, Reason> =>
          taken.failure === undefined
            ? Stream.fromIterable(taken.parts)
            : Stream.concat(Stream.fromIterable(taken.parts), Stream.fail(taken.failure))
        const ending = Stream.suspend(() =>
          Stream.concat(
            emit(take(decoder.done() ? "" : `${text.decode()}\n\n`)),
            Stream.suspend(() => {
              const closing = decoder.end()
              return Array.isArray(closing) ? Stream.fromIterable(closing) : Stream.fail(closing)
            })
          )
        )
        return response.stream.pipe(
          Stream.timeoutOrElse({ duration: timeoutMs, orElse: () => Stream.fail(timeoutReason("waiting for the next chunk")) }),
          Stream.mapError((error): Reason => (isReason(error) ? error : transportReason(error, "keep reading from"))),
          Stream.map((bytes) => take(text.decode(bytes, { stream: true }))),
          Stream.takeUntil((taken) => taken.failure !== undefined || decoder.done()),
          Stream.flatMap(emit),
          Stream.concat(ending)
        )
      })).pipe(Stream.mapError(fail("streamText")))

    /** The streamed parts folded into whole ones (for `generateText`). */
    const collapse = (parts: ReadonlyArray<Response.StreamPartEncoded>): Array<Response.PartEncoded> => {
      const out: Array<Response.PartEncoded> = []
      let text = ""
      let reasoning = ""
      for (const part of parts) {
        if (part.type === "text-delta") text += part.delta
        else if (part.type === "reasoning-delta") reasoning += part.delta
        else if (part.type === "tool-call" || part.type === "finish") out.push(part)
      }
      return [
        ...(reasoning === "" ? [] : [{ type: "reasoning" as const, text: reasoning }]),
        ...(text === "" ? [] : [{ type: "text" as const, text }]),
        ...out
      ]
    }

    return yield* LanguageModel.make({
      streamText,
      generateText: (providerOptions) => Stream.runCollect(streamText(providerOptions)).pipe(Effect.map(collapse))
    })
  })

/** The model as a layer; requires an `HttpClient`. */
export const layer = (options: OpenAiCompatibleOptions): Layer.Layer<LanguageModel.LanguageModel, never, HttpClient.HttpClient> =>
  Layer.effect(LanguageModel.LanguageModel, make(options))

/** The options from agentwire's settings (`AGENTWIRE_LLM_*`). */
export const optionsFromSettings = (settings: LlmSettings): OpenAiCompatibleOptions => ({
  baseUrl: settings.baseUrl,
  model: settings.model,
  apiKey: Option.getOrUndefined(settings.apiKey),
  timeoutMs: settings.timeoutMs
})

/**
 * The model over Node's undici HTTP client: what `npm start` uses. Aborting
 * (interruption) destroys the request's socket.
 */
export const layerNode = (options: OpenAiCompatibleOptions): Layer.Layer<LanguageModel.LanguageModel> =>
  layer(options).pipe(Layer.provide(NodeHttpClient.layerUndici))
