/**
 * Wire protocol v1: every frame that crosses `GET /ws`, as Effect Schemas.
 *
 * The server, the tests and clients import this one module. Frames are JSON text.
 * `docs/protocol.md` describes the same protocol in prose.
 *
 * @module
 */
import { Schema } from "effect"

/** Version announced in `connection_established`. */
export const PROTOCOL_VERSION = 1

/** Subprotocol a client may offer beside `jwt.<token>`; selected when offered. */
export const SUBPROTOCOL = "agentwire.v1"

/** Ids that look like leftovers from wiring bugs rather than real ids. */
export const PLACEHOLDER_IDS: ReadonlyArray<string> = ["registry", "placeholder", "none", "null", "undefined"]

/**
 * An id (user, thread, run, request): 1 to 128 characters of `[A-Za-z0-9._:-]`,
 * never a placeholder such as `none` or `undefined` (any case).
 */
export const Id = Schema.String.check(
  Schema.isMinLength(1),
  Schema.isMaxLength(128),
  Schema.isPattern(/^[A-Za-z0-9._:-]+$/, { message: "Expected only the characters A-Z a-z 0-9 . _ : -" }),
  Schema.makeFilter((s: string) => !PLACEHOLDER_IDS.includes(s.toLowerCase()), {
    message: "Expected a real id, not a placeholder (registry, placeholder, none, null, undefined)"
  })
)

// ---------------------------------------------------------------------------
// client -> server

/** Start a run of `agent` (default agent when absent) on `user_request`. */
export const StartAgent = Schema.Struct({
  type: Schema.Literal("start_agent"),
  agent: Schema.optionalKey(Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(128))),
  user_request: Schema.String.check(Schema.isMinLength(1)),
  thread_id: Schema.optionalKey(Id),
  request_id: Schema.optionalKey(Id)
})
export type StartAgent = typeof StartAgent.Type

/** A chat message: starts a run of the default agent on `text`. */
export const UserMessage = Schema.Struct({
  type: Schema.Literal("user_message"),
  text: Schema.String.check(Schema.isMinLength(1)),
  thread_id: Schema.optionalKey(Id),
  request_id: Schema.optionalKey(Id)
})
export type UserMessage = typeof UserMessage.Type

/** Liveness check; answered with `pong`. */
export const Ping = Schema.Struct({ type: Schema.Literal("ping") })
export type Ping = typeof Ping.Type

/**
 * Stops runs of the sender's user: the run `run_id`, every run of `thread_id`,
 * or (neither given) every run of the user. Answered with `run_stopped` after
 * the stopped runs' terminal events.
 */
export const StopAgent = Schema.Struct({
  type: Schema.Literal("stop_agent"),
  run_id: Schema.optionalKey(Id),
  thread_id: Schema.optionalKey(Id),
  request_id: Schema.optionalKey(Id)
})
export type StopAgent = typeof StopAgent.Type

/** Longest token accepted in `authenticate`, in characters. */
export const MAX_TOKEN_LENGTH = 8192

/**
 * Replaces the connection's token (refresh before expiry). Answered with
 * `authenticated`, or `error {code: "AUTH_FAILED"}` when the token fails or
 * names another user; the connection then keeps its current token.
 */
export const Authenticate = Schema.Struct({
  type: Schema.Literal("authenticate"),
  token: Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(MAX_TOKEN_LENGTH)),
  request_id: Schema.optionalKey(Id)
})
export type Authenticate = typeof Authenticate.Type

/** A `seq` position: 0 (before the first event) or more. */
const SeqPosition = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0), Schema.isLessThanOrEqualTo(Number.MAX_SAFE_INTEGER))

/**
 * Asks for the events of `run_id` with `seq > after_seq` (0 = all): every
 * retained one, in order, then `run_resumed`, then (if the run is still
 * active) its live events, each exactly once on this connection. Unknown runs
 * and other users' runs: `error RUN_NOT_FOUND`; runs past retention:
 * `error RUN_EXPIRED` with `last_seq`.
 */
export const ResumeRun = Schema.Struct({
  type: Schema.Literal("resume_run"),
  run_id: Id,
  after_seq: SeqPosition,
  request_id: Schema.optionalKey(Id)
})
export type ResumeRun = typeof ResumeRun.Type

/** A run's status: `running` while active, else its root `agent_completed.status`. */
export const RunStatus = Schema.Literals(["running", "completed", "failed", "cancelled", "timed_out"])
export type RunStatus = typeof RunStatus.Type

/** Most runs a `runs` answer lists. */
export const MAX_LIST_RUNS = 100

/** Lists the user's active and retained runs, newest first (at most `limit`, 1 to 100, default 100); answered with `runs`. */
export const ListRuns = Schema.Struct({
  type: Schema.Literal("list_runs"),
  thread_id: Schema.optionalKey(Id),
  status: Schema.optionalKey(RunStatus),
  limit: Schema.optionalKey(Schema.Int.check(Schema.isGreaterThanOrEqualTo(1), Schema.isLessThanOrEqualTo(MAX_LIST_RUNS))),
  request_id: Schema.optionalKey(Id)
})
export type ListRuns = typeof ListRuns.Type

// ---------------------------------------------------------------------------
// client -> server: threads (issue 14: durable history)

/** Most threads a `threads` answer lists. */
export const MAX_LIST_THREADS = 100

/**
 * Lists the user's threads, newest `updated_at` first, `limit` (1 to 100,
 * default 20) at a time; `before` is the `next_before` of the previous page.
 * Answered with `threads`.
 */
export const ListThreads = Schema.Struct({
  type: Schema.Literal("list_threads"),
  before: Schema.optionalKey(Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(200))),
  limit: Schema.optionalKey(Schema.Int.check(Schema.isGreaterThanOrEqualTo(1), Schema.isLessThanOrEqualTo(MAX_LIST_THREADS))),
  request_id: Schema.optionalKey(Id)
})
export type ListThreads = typeof ListThreads.Type

/** Asks for one thread: its messages and runs. Answered with `thread`, or `error THREAD_NOT_FOUND`. */
export const GetThread = Schema.Struct({
  type: Schema.Literal("get_thread"),
  thread_id: Id,
  request_id: Schema.optionalKey(Id)
})
export type GetThread = typeof GetThread.Type

/** Deletes one thread (its runs in flight are stopped first). Answered with `thread_deleted`, or `error THREAD_NOT_FOUND`. */
export const DeleteThread = Schema.Struct({
  type: Schema.Literal("delete_thread"),
  thread_id: Id,
  request_id: Schema.optionalKey(Id)
})
export type DeleteThread = typeof DeleteThread.Type

const threadClientMembers = [ListThreads, GetThread, DeleteThread] as const
const THREAD_CLIENT_TYPES = ["list_threads", "get_thread", "delete_thread"] as const

/** Every message a client may send. */
export const ClientMessage = Schema.Union([StartAgent, UserMessage, Ping, Authenticate, StopAgent, ResumeRun, ListRuns, ...threadClientMembers]).pipe(
  Schema.toTaggedUnion("type")
)
export type ClientMessage = typeof ClientMessage.Type

/** The `type` values a client may send. */
export const CLIENT_MESSAGE_TYPES: ReadonlyArray<ClientMessage["type"]> = [
  "start_agent",
  "user_message",
  "ping",
  "authenticate",
  "stop_agent",
  "resume_run",
  "list_runs",
  ...THREAD_CLIENT_TYPES
]

// ---------------------------------------------------------------------------
// server -> client: connection-level frames

/** First frame on every accepted connection. */
export const ConnectionEstablished = Schema.Struct({
  type: Schema.Literal("connection_established"),
  connection_id: Schema.String,
  user_id: Schema.String,
  protocol_version: Schema.Literal(PROTOCOL_VERSION),
  max_message_bytes: Schema.Int,
  /**
   * The id of the run log's lifetime. A client that reconnects and sees
   * another epoch than before knows that the events it did not receive are
   * gone (the server restarted); the same epoch means `resume_run` can get them.
   */
  server_epoch: Schema.optionalKey(Schema.String)
})
export type ConnectionEstablished = typeof ConnectionEstablished.Type

/** Answer to `ping`. */
export const Pong = Schema.Struct({ type: Schema.Literal("pong"), timestamp: Schema.String })
export type Pong = typeof Pong.Type

/** Answer to `authenticate`: the connection now runs on the new token. */
export const Authenticated = Schema.Struct({
  type: Schema.Literal("authenticated"),
  user_id: Schema.String,
  /** When the new token expires (ISO 8601, from its `exp`). */
  expires_at: Schema.String,
  request_id: Schema.optionalKey(Schema.String)
})
export type Authenticated = typeof Authenticated.Type

/**
 * A start was accepted: sent to the connection that sent it, before the run's
 * first event. `duplicate: true` when the `request_id` matched a run started
 * within the idempotency window with the same payload: no new run was started.
 */
export const RunAccepted = Schema.Struct({
  type: Schema.Literal("run_accepted"),
  run_id: Schema.String,
  thread_id: Schema.String,
  request_id: Schema.String,
  agent_name: Schema.optionalKey(Schema.String),
  duplicate: Schema.optionalKey(Schema.Boolean)
})
export type RunAccepted = typeof RunAccepted.Type

/** Answer to `stop_agent`, after the stopped runs' terminal events: the runs actually stopped. */
export const RunStopped = Schema.Struct({
  type: Schema.Literal("run_stopped"),
  run_ids: Schema.Array(Schema.String),
  request_id: Schema.optionalKey(Schema.String)
})
export type RunStopped = typeof RunStopped.Type

/**
 * Sent after the replay of a `resume_run`: events up to `last_seq` were
 * replayed (those after `after_seq`); `status` is the run's at that moment. A
 * `running` run's later events follow live.
 */
export const RunResumed = Schema.Struct({
  type: Schema.Literal("run_resumed"),
  run_id: Schema.String,
  after_seq: Schema.Int,
  last_seq: Schema.Int,
  status: RunStatus,
  request_id: Schema.optionalKey(Schema.String)
})
export type RunResumed = typeof RunResumed.Type

/** One run in a `runs` answer. */
export const RunInfo = Schema.Struct({
  run_id: Schema.String,
  thread_id: Schema.String,
  agent_name: Schema.String,
  status: RunStatus,
  /** ISO 8601: the run's first event. */
  started_at: Schema.String,
  /** ISO 8601: the run's root `agent_completed`; absent while running. */
  ended_at: Schema.optionalKey(Schema.String),
  /** The `seq` of its last event so far. */
  last_seq: Schema.Int
})
export type RunInfo = typeof RunInfo.Type

/** Answer to `list_runs`: the user's active and retained runs, newest first. */
export const Runs = Schema.Struct({
  type: Schema.Literal("runs"),
  runs: Schema.Array(RunInfo),
  request_id: Schema.optionalKey(Schema.String)
})
export type Runs = typeof Runs.Type

/**
 * Codes of protocol `error` frames. v1 grows this list by addition; clients
 * must treat a code they do not know as a generic refusal.
 */
export const ErrorCode = Schema.Literals([
  "INVALID_JSON",
  "INVALID_MESSAGE",
  "UNKNOWN_TYPE",
  "UNKNOWN_AGENT",
  // admission closed: the server is shutting down; no run was started
  "SHUTTING_DOWN",
  // an `authenticate` token failed or named another user; the connection keeps its token
  "AUTH_FAILED",
  // the connection's token expired without a refresh; the server closes with 4001
  "TOKEN_EXPIRED",
  // the user already has AGENTWIRE_MAX_RUNS_PER_USER runs in flight; no run was started
  "RUN_LIMIT_EXCEEDED",
  // the process already runs AGENTWIRE_MAX_RUNS runs; no run was started; retry later
  "SERVER_BUSY",
  // the user started runs faster than their budget; retry after `retry_after_ms`
  "RATE_LIMITED",
  // the request_id was used within the idempotency window for a different request
  "REQUEST_ID_CONFLICT",
  // the server failed to handle the frame (a bug); the connection stays open
  "INTERNAL",
  // resume_run: no such run for this user (unknown, or another user's: indistinguishable)
  "RUN_NOT_FOUND",
  // resume_run: the run's events are no longer retained; `last_seq` says how far its log went
  "RUN_EXPIRED",
  // resume_run: a later resume_run of the same run on the same connection took over from this one
  "RESUME_REPLACED",
  // threads (issue 14): no such thread for this user (unknown, or another user's: indistinguishable);
  // also a start naming a thread id another user has
  "THREAD_NOT_FOUND",
  // threads (issue 14): the history database cannot answer now; streaming is not affected; retry later
  "HISTORY_UNAVAILABLE",
  // resume_run / list_runs: the shared run log (Redis) is unreachable right now; retry later
  "LOG_UNAVAILABLE"
])
export type ErrorCode = typeof ErrorCode.Type

/** A client frame was refused; the connection stays open. */
export const ProtocolError = Schema.Struct({
  type: Schema.Literal("error"),
  code: ErrorCode,
  message: Schema.String,
  request_id: Schema.optionalKey(Schema.String),
  /** With `RATE_LIMITED`: how long until a start would be admitted, in milliseconds. */
  retry_after_ms: Schema.optionalKey(Schema.Int),
  /** With `RUN_NOT_FOUND` and `RUN_EXPIRED`: the run asked for. */
  run_id: Schema.optionalKey(Schema.String),
  /** With `RUN_EXPIRED`: the `seq` of the run's last event. */
  last_seq: Schema.optionalKey(Schema.Int)
})
export type ProtocolError = typeof ProtocolError.Type

// ---------------------------------------------------------------------------
// server -> client: agent events

/** Fields every agent event carries. `seq` counts 1, 2, 3… per run with no gaps. */
const EventBase = {
  event_id: Schema.String,
  run_id: Schema.String,
  thread_id: Schema.String,
  user_id: Schema.String,
  agent_name: Schema.String,
  depth: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  seq: Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)),
  timestamp: Schema.String
} as const

/** JSON-compatible value carried in tool parameters and outputs. */
export const JsonValue = Schema.Unknown

export const AgentStarted = Schema.Struct({
  type: Schema.Literal("agent_started"),
  ...EventBase,
  task_description: Schema.String,
  request_id: Schema.optionalKey(Schema.String)
})

export const AgentThinking = Schema.Struct({
  type: Schema.Literal("agent_thinking"),
  ...EventBase,
  reasoning: Schema.String,
  step_number: Schema.optionalKey(Schema.Int)
})

export const ToolExecuting = Schema.Struct({
  type: Schema.Literal("tool_executing"),
  ...EventBase,
  tool_name: Schema.String,
  execution_id: Schema.String,
  parameters: Schema.Record(Schema.String, JsonValue)
})

/** Outcome of one tool call. */
export const ToolResults = Schema.Struct({
  status: Schema.Literals(["success", "error", "timeout", "cancelled"]),
  output: Schema.optionalKey(JsonValue),
  error: Schema.optionalKey(Schema.String)
})
export type ToolResults = typeof ToolResults.Type

export const ToolCompleted = Schema.Struct({
  type: Schema.Literal("tool_completed"),
  ...EventBase,
  tool_name: Schema.String,
  execution_id: Schema.String,
  success: Schema.Boolean,
  results: ToolResults,
  duration_ms: Schema.Number
})

/** Why a run (or sub-agent) failed. */
export const AgentErrorInfo = Schema.Struct({ code: Schema.String, message: Schema.String })

export const AgentErrorEvent = Schema.Struct({
  type: Schema.Literal("agent_error"),
  ...EventBase,
  error: AgentErrorInfo
})

export const AgentCompleted = Schema.Struct({
  type: Schema.Literal("agent_completed"),
  ...EventBase,
  /** `cancelled`: stopped by its user, or by shutdown past the grace period; `timed_out`: over the run timeout. */
  status: Schema.Literals(["completed", "failed", "cancelled", "timed_out"]),
  final_response: Schema.String,
  duration_ms: Schema.Number
})

/**
 * A piece of an answer while it is generated. The deltas of one `message_id`
 * concatenate, in `seq` order, to that message's text; several deltas that
 * arrive close together may be sent as one.
 */
export const PartialResult = Schema.Struct({
  type: Schema.Literal("partial_result"),
  ...EventBase,
  message_id: Schema.String,
  delta: Schema.String
})

/** Why a run was stopped from outside: by its user (`stop_agent`) or by shutdown past the grace period. */
export const AgentStopped = Schema.Struct({
  type: Schema.Literal("agent_stopped"),
  ...EventBase,
  reason: Schema.Literals(["user_request", "server_shutdown"])
})

const agentEventMembers = [
  AgentStarted,
  AgentThinking,
  ToolExecuting,
  ToolCompleted,
  AgentErrorEvent,
  AgentCompleted,
  PartialResult,
  AgentStopped
] as const

/** Every agent event. Each run ends with exactly one `agent_completed` at depth 0, last. */
export const AgentEvent = Schema.Union(agentEventMembers).pipe(Schema.toTaggedUnion("type"))
export type AgentEvent = typeof AgentEvent.Type

/** The fields the run emitter stamps on every event. */
export type EventStamp = "event_id" | "run_id" | "thread_id" | "user_id" | "agent_name" | "depth" | "seq" | "timestamp"

/** An agent event before stamping: what an agent (through its context) reports. */
export type AgentEventBody = AgentEvent extends infer E ? E extends AgentEvent ? Omit<E, EventStamp> : never : never

// ---------------------------------------------------------------------------
// server -> client: threads (issue 14: durable history). Times are ISO 8601.

/** One entry of `threads`. `last_status`: the status of the thread's newest run (absent when none). */
export const ThreadInfo = Schema.Struct({
  thread_id: Schema.String,
  title: Schema.String,
  created_at: Schema.String,
  updated_at: Schema.String,
  last_status: Schema.optionalKey(RunStatus)
})
export type ThreadInfo = typeof ThreadInfo.Type

/** The answer to `list_threads`; `next_before` (absent on the last page) asks for the next page. */
export const Threads = Schema.Struct({
  type: Schema.Literal("threads"),
  threads: Schema.Array(ThreadInfo),
  next_before: Schema.optionalKey(Schema.String),
  request_id: Schema.optionalKey(Schema.String)
})
export type Threads = typeof Threads.Type

/** A stored message: the request (`user`) or the answer (`assistant`) of the run `run_id`. */
export const ThreadMessage = Schema.Struct({
  role: Schema.Literals(["user", "assistant"]),
  content: Schema.String,
  run_id: Schema.optionalKey(Schema.String),
  created_at: Schema.String,
  /** `true` when `content` is only the start of the stored message (cut to keep the answer bounded). */
  truncated: Schema.optionalKey(Schema.Boolean)
})
export type ThreadMessage = typeof ThreadMessage.Type

/** The summary of one run of a thread. */
export const ThreadRun = Schema.Struct({
  run_id: Schema.String,
  agent_name: Schema.String,
  status: RunStatus,
  started_at: Schema.String,
  ended_at: Schema.optionalKey(Schema.String),
  final_response: Schema.optionalKey(Schema.String),
  error_code: Schema.optionalKey(Schema.String)
})
export type ThreadRun = typeof ThreadRun.Type

/**
 * The answer to `get_thread`: messages and runs, oldest first. Bounded (about
 * 1 MiB of text): the newest messages and runs that fit; `truncated: true` when
 * older ones were left out or a text was cut.
 */
export const Thread = Schema.Struct({
  type: Schema.Literal("thread"),
  thread_id: Schema.String,
  title: Schema.String,
  created_at: Schema.String,
  updated_at: Schema.String,
  last_status: Schema.optionalKey(RunStatus),
  messages: Schema.Array(ThreadMessage),
  runs: Schema.Array(ThreadRun),
  /** `true` when older messages or runs were left out, or a message or final response was cut, to keep the answer bounded. */
  truncated: Schema.optionalKey(Schema.Boolean),
  request_id: Schema.optionalKey(Schema.String)
})
export type Thread = typeof Thread.Type

/** The answer to `delete_thread`. */
export const ThreadDeleted = Schema.Struct({
  type: Schema.Literal("thread_deleted"),
  thread_id: Schema.String,
  request_id: Schema.optionalKey(Schema.String)
})
export type ThreadDeleted = typeof ThreadDeleted.Type

const threadServerMembers = [Threads, Thread, ThreadDeleted] as const

/** Every frame a server may send. */
export const ServerMessage = Schema.Union([
  ConnectionEstablished,
  Pong,
  Authenticated,
  RunAccepted,
  RunStopped,
  RunResumed,
  Runs,
  ProtocolError,
  ...threadServerMembers,
  ...agentEventMembers
]).pipe(
  Schema.toTaggedUnion("type")
)
export type ServerMessage = typeof ServerMessage.Type

/** Decodes one server frame (JSON text), strictly: throws on anything this version does not know. For tests. */
export const decodeServerMessage = Schema.decodeUnknownSync(Schema.fromJsonString(ServerMessage))

const decodeServerResult = Schema.decodeUnknownResult(ServerMessage)

/**
 * Decodes one server frame (JSON text) the way a client must: a frame this
 * version does not know (a newer message type, or a newer value in a known
 * field) gives `undefined`, to be ignored, instead of an error. Protocol v1
 * grows only by addition, so a client built on this keeps working with newer
 * servers. Fields a message does not declare are dropped.
 */
export const decodeServerFrame = (text: string): ServerMessage | undefined => {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return undefined
  }
  const result = decodeServerResult(value)
  return result._tag === "Success" ? result.success : undefined
}

// ---------------------------------------------------------------------------
// decoding client frames into a message or a protocol error

const decodeStartAgent = Schema.decodeUnknownResult(StartAgent)
const decodeUserMessage = Schema.decodeUnknownResult(UserMessage)
const decodePing = Schema.decodeUnknownResult(Ping)
const decodeAuthenticate = Schema.decodeUnknownResult(Authenticate)
const decodeStopAgent = Schema.decodeUnknownResult(StopAgent)
const decodeResumeRun = Schema.decodeUnknownResult(ResumeRun)
const decodeListRuns = Schema.decodeUnknownResult(ListRuns)
const decodeListThreads = Schema.decodeUnknownResult(ListThreads)
const decodeGetThread = Schema.decodeUnknownResult(GetThread)
const decodeDeleteThread = Schema.decodeUnknownResult(DeleteThread)

const describeIssue = (error: Schema.SchemaError): string => error.message.replace(/\s+/g, " ").trim()

const isId = Schema.is(Id)

/** The frame's `request_id`, echoed in its error only when it is a valid id. */
const requestIdOf = (value: Record<string, unknown>): { readonly request_id?: string } =>
  isId(value.request_id) ? { request_id: value.request_id } : {}

/**
 * Decodes one parsed client message. Never throws: a bad message becomes a
 * `ProtocolError` whose message names the offending field.
 */
export const decodeClientValue = (value: unknown): ClientMessage | ProtocolError => {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { type: "error", code: "INVALID_MESSAGE", message: "frame must be a JSON object with a string field \"type\"" }
  }
  const record = value as Record<string, unknown>
  const type = record.type
  if (typeof type !== "string") {
    return { type: "error", code: "INVALID_MESSAGE", message: "field \"type\" is missing or not a string", ...requestIdOf(record) }
  }
  const result = type === "start_agent"
    ? decodeStartAgent(value, { errors: "all" })
    : type === "user_message"
    ? decodeUserMessage(value, { errors: "all" })
    : type === "ping"
    ? decodePing(value)
    : type === "authenticate"
    ? decodeAuthenticate(value)
    : type === "stop_agent"
    ? decodeStopAgent(value, { errors: "all" })
    : type === "resume_run"
    ? decodeResumeRun(value, { errors: "all" })
    : type === "list_runs"
    ? decodeListRuns(value, { errors: "all" })
    : type === "list_threads"
    ? decodeListThreads(value, { errors: "all" })
    : type === "get_thread"
    ? decodeGetThread(value, { errors: "all" })
    : type === "delete_thread"
    ? decodeDeleteThread(value, { errors: "all" })
    : undefined
  if (result === undefined) {
    return {
      type: "error",
      code: "UNKNOWN_TYPE",
      message: `unknown message type "${type.slice(0, 64)}"; expected one of ${CLIENT_MESSAGE_TYPES.join(", ")}`,
      ...requestIdOf(record)
    }
  }
  if (result._tag === "Success") return result.success
  if (type === "authenticate") {
    // never echo (part of) a token back: the schema's message would quote the value
    return {
      type: "error",
      code: "INVALID_MESSAGE",
      message: `invalid authenticate: token must be a string of 1 to ${MAX_TOKEN_LENGTH} characters; request_id, when present, a valid id`,
      ...requestIdOf(record)
    }
  }
  return {
    type: "error",
    code: "INVALID_MESSAGE",
    message: `invalid ${type}: ${describeIssue(result.failure)}`,
    ...requestIdOf(record)
  }
}

/** Parses and decodes one client text frame; invalid JSON gives `INVALID_JSON`. */
export const decodeClientFrame = (text: string): ClientMessage | ProtocolError => {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return { type: "error", code: "INVALID_JSON", message: "frame is not valid JSON" }
  }
  return decodeClientValue(value)
}
