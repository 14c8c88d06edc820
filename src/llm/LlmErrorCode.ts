/**
 * Language model failures as `agent_error` codes a client can act on.
 *
 * | code | cause |
 * |---|---|
 * | `LLM_AUTH` | the endpoint refused the credentials (HTTP 401/403) |
 * | `LLM_RATE_LIMITED` | HTTP 429 (or quota exhausted), still so after the bounded retries |
 * | `LLM_UNAVAILABLE` | HTTP 5xx, connection refused or reset, or the stream cut mid-way |
 * | `LLM_TIMEOUT` | no byte from the endpoint for `AGENTWIRE_LLM_TIMEOUT_MS` |
 * | `LLM_BAD_RESPONSE` | the stream or a tool call's arguments are not what the format says |
 * | `LLM_CONTEXT_TOO_LONG` | the endpoint says the conversation exceeds the model's context |
 * | `LLM_REQUEST_REJECTED` | any other refusal (HTTP 400/404/422, e.g. an unknown model name) |
 * | `LLM_MAX_STEPS` | the model still asked for tools after `AGENTWIRE_LLM_MAX_STEPS` turns (raised by the agent) |
 *
 * Works for any `LanguageModel` layer: a provider may pin the code with
 * `metadata.agentwire_code` on the `AiError` reason (ours does); otherwise the
 * reason's tag decides.
 *
 * @module
 */
import type { AiError } from "effect/ai"

export const LLM_ERROR_CODES = [
  "LLM_AUTH",
  "LLM_RATE_LIMITED",
  "LLM_UNAVAILABLE",
  "LLM_TIMEOUT",
  "LLM_BAD_RESPONSE",
  "LLM_CONTEXT_TOO_LONG",
  "LLM_REQUEST_REJECTED",
  "LLM_MAX_STEPS"
] as const
export type LlmErrorCode = typeof LLM_ERROR_CODES[number]

const isCode = (value: unknown): value is LlmErrorCode => LLM_ERROR_CODES.includes(value as LlmErrorCode)

/** The code of a reason, from its pinned `metadata.agentwire_code` or its tag. */
export const codeOfReason = (reason: AiError.AiErrorReason): LlmErrorCode => {
  const pinned = "metadata" in reason ? (reason.metadata as Record<string, unknown>).agentwire_code : undefined
  if (isCode(pinned)) return pinned
  switch (reason._tag) {
    case "AuthenticationError":
      return "LLM_AUTH"
    case "RateLimitError":
    case "QuotaExhaustedError":
      return "LLM_RATE_LIMITED"
    case "InternalProviderError":
    case "NetworkError":
    case "UnknownError":
      return "LLM_UNAVAILABLE"
    case "InvalidRequestError":
    case "ContentPolicyError":
    case "UnsupportedSchemaError":
    case "InvalidUserInputError":
      return "LLM_REQUEST_REJECTED"
    default:
      return "LLM_BAD_RESPONSE"
  }
}

/** `{code, message}` for an `AiError`; the message is the reason's own (never holds the API key). */
export const describe = (error: AiError.AiError): { readonly code: LlmErrorCode; readonly message: string } => ({
  code: codeOfReason(error.reason),
  message: error.reason.message
})
