/**
 * agentwire: run AI agents per user request and stream every step live to
 * that user's WebSocket connections.
 *
 * Service classes are exported by name (`yield* ExecutionEngineFactory`);
 * their layers are namespaces with a distinct name (`AgentRegistryLayer.layer`,
 * `AgentRuntime.layer`, `AgentwireConfigLayer.layer`), so the two never clash.
 * `examples/embedding.ts` shows the pieces together.
 *
 * @module
 */

// ---------------------------------------------------------------------------
// protocol and agent API

/** Wire protocol v1: the schema of every frame on `GET /ws`, decoders and constants. */
export * as Protocol from "./protocol/Protocol.ts"

/** The agent API: `Agent.make`, `AgentContext` (think / tool / delegate), `AgentError`, `ToolError`. */
export * as Agent from "./services/Agent.ts"

// ---------------------------------------------------------------------------
// services (contracts) and their errors

/** Delivers agent events to the live connections of their user; the only way events reach users. */
export { type BridgeConnection, WebSocketBridge } from "./services/WebSocketBridge.ts"

/** Creates agent instances bound to one run; requires `WebSocketBridge` and `AgentRegistry`. */
export { type AgentInstance, AgentInstanceFactory, type AgentOutcome } from "./services/AgentInstanceFactory.ts"

/** One scoped engine per request (`createForUser`) or a background run (`start`). */
export {
  ExecutionEngineFactory,
  type RunHandle,
  type RunSelector,
  type RunState,
  type StartOptions,
  type UserExecutionEngine
} from "./services/ExecutionEngineFactory.ts"

/** Who may start a run now: limits, idempotent starts, the start budget, shutdown admission. */
export { type Admission, AdmissionError, type AdmitOptions, RunAdmission, type RunLimits } from "./services/RunAdmission.ts"

/** The registered agents by name, and the errors of looking one up or building the registry. */
export { AgentRegistry, AgentRegistryError, type RegisteredAgent, UnknownAgentError } from "./services/AgentRegistry.ts"

/** Who a run belongs to: `UserExecutionContext.make({ user_id })` validates ids and generates the missing ones. */
export * as UserExecutionContext from "./services/UserExecutionContext.ts"

/** Raised by `UserExecutionContext.make` for an invalid or placeholder id. */
export { InvalidContextError } from "./services/UserExecutionContext.ts"

/** Turns a bearer token into a verified user id and expiry; `AuthError` names the reason and never contains the token. */
export {
  Auth,
  AuthError,
  type AuthErrorReason,
  AuthErrorReasons,
  MissingSecretError,
  type VerifiedToken
} from "./services/Auth.ts"

/** `isOriginAllowed(settings, originHeader)`: the `AGENTWIRE_ALLOWED_ORIGINS` check. */
export * as OriginPolicy from "./services/OriginPolicy.ts"

/** The server's settings and the error naming a bad environment variable. */
export { AgentwireConfig, type AgentwireSettings, ConfigInvalidError } from "./services/AgentwireConfig.ts"

/** The listening HTTP + WebSocket server (bound host, port, url) and its startup error. */
export { AgentwireServer, ServerStartError } from "./services/AgentwireServer.ts"

/** Conversation history per `(user_id, thread_id)`, for agents that remember (the `assistant`). */
export {
  type ConversationKey,
  type ConversationMessage,
  ConversationStore,
  ConversationStoreError
} from "./services/ConversationStore.ts"

/** Every event of a run, retained for resume: `RunLog`, its errors, and `follow` (replay then live, from a seq). */
export {
  AfterSeqError,
  type AppendResult,
  follow,
  type FollowItem,
  type ListOptions,
  type LoggedEvent,
  type LogPage,
  RunExpiredError,
  RunLog,
  type RunLogReadError,
  type RunLogSettings,
  RunNotFoundError,
  type RunStatus,
  type RunSummary
} from "./services/RunLog.ts"

/** The per-run emitter that stamps `seq`, `event_id`, ids and timestamps on every event. */
export type { RunEmitter, StopCause } from "./services/RunEmitter.ts"

// ---------------------------------------------------------------------------
// layers

/** `AgentRuntime.layer` (engines + instances + in-memory bridge) and `layerWithoutBridge`. */
export * as AgentRuntime from "./layers/AgentRuntime.ts"

/** `AgentRegistryLayer.layer(agents, { defaultAgent })`: requires what the agents require. */
export * as AgentRegistryLayer from "./layers/AgentRegistry.ts"

/** The in-memory `WebSocketBridge` for one process. */
export * as WebSocketBridgeMemory from "./layers/WebSocketBridgeMemory.ts"

/** The in-memory `RunLog` (one process): `layer(settings)`, `layerConfig` (from `AgentwireConfig`). */
export * as RunLogMemory from "./layers/RunLogMemory.ts"

/** The in-memory `RunAdmission` (per-process limits). */
export * as RunAdmissionMemory from "./layers/RunAdmissionMemory.ts"

/** A `WebSocketBridge` test double that also records every event (`RecordedEvents`). */
export * as WebSocketBridgeRecording from "./layers/WebSocketBridgeRecording.ts"

/** Reads what a recording bridge captured: `all`, `ofRun`, `waitFor`, `clear`. */
export { RecordedEvents } from "./layers/WebSocketBridgeRecording.ts"

/** `AgentwireConfigLayer.layer({ port: 0 })` from values, `layerFromEnv` from `AGENTWIRE_*` variables. */
export * as AgentwireConfigLayer from "./layers/AgentwireConfig.ts"

/** `Auth` with JWTs: HS256 with the secret, RS/PS/ES/EdDSA from a JWKS; the policy comes from `AgentwireConfig`. */
export * as AuthJwt from "./layers/AuthJwt.ts"

/** `ConversationStoreMemory.layer({ maxMessagesPerThread, maxCharsPerThread, maxThreads })`: bounded, in memory. */
export * as ConversationStoreMemory from "./layers/ConversationStoreMemory.ts"

/** A `LanguageModel` (effect/ai) over any OpenAI-compatible Chat Completions endpoint: `layerNode({ baseUrl, model, apiKey })`. */
export * as OpenAiCompatible from "./layers/OpenAiCompatible.ts"

/** Provider failures as `agent_error` codes (`LLM_AUTH`, `LLM_TIMEOUT`, …). */
export * as LlmErrorCode from "./llm/LlmErrorCode.ts"

/** The HTTP + WebSocket server layer; requires config, auth and the agent runtime. */
export * as Server from "./server/Server.ts"

// ---------------------------------------------------------------------------
// agents and compositions

/** The built-in agents (supervisor, triage, calculator, echo, ticker) and a registry layer of them. */
export * as BuiltinAgents from "./agents/BuiltinAgents.ts"

/** `Assistant.make({ toolkit })`: a language model agent with tools and streamed answers; `Assistant.assistant()` has the built-in tools. */
export * as Assistant from "./agents/Assistant.ts"

/** The assistant's built-in tools (`calculate`, `current_time`) as an effect/ai `Toolkit`, and their handlers. */
export * as AssistantTools from "./agents/AssistantTools.ts"

/** Whole-service compositions: `Agentwire.layerServer(registry)`, `layerServerFromEnv`. */
export * as Agentwire from "./Agentwire.ts"
