/**
 * A run's log over HTTP: query parsing, the JSON page of events, and the
 * Server-Sent Events stream (replay, then live, until the run's last event).
 *
 * The SSE stream is pull-based: the next page of the log is read only when
 * the HTTP server asks for the next chunk, which it does only after Node's
 * `ServerResponse.write` accepted the previous one without exceeding its
 * high-water mark (or after `drain`). A reader that stops reading therefore
 * stops the stream where it is: the server holds at most one page beyond
 * Node's socket buffer, however long the run. A reader that leaves closes the
 * response, which interrupts the request fiber (and with it the wait on the
 * log).
 *
 * @module
 */
import { Result, Schema, Stream } from "effect"
import { Id, RunStatus } from "../protocol/Protocol.ts"
import { follow, type ListOptions, type LoggedEvent, MAX_LIST_RUNS, type RunLog } from "../services/RunLog.ts"

/** Events one `GET /api/runs/{run_id}/events` JSON answer holds at most; a client pages on with the last one's `seq`. */
export const MAX_EVENTS_PER_PAGE = 1000

/** Bytes of event JSON one JSON answer holds at most (a single larger event is still sent whole). */
export const MAX_BYTES_PER_PAGE = 4 * 1024 * 1024

/** The comment an idle SSE stream sends every `sseHeartbeatMs`. */
export const KEEPALIVE = ": keepalive\n\n"

/** The comment that opens every SSE stream (so that the response head is sent at once). */
export const OPENING = ": ok\n\n"

const MAX_SHOWN = 32

const shown = (value: string) => JSON.stringify(value.length > MAX_SHOWN ? `${value.slice(0, MAX_SHOWN)}…` : value)

/** A query parameter or header that cannot be used, with a message naming it. */
export interface InvalidParameter {
  readonly name: string
  readonly message: string
}

const invalid = (name: string, message: string): Result.Result<never, InvalidParameter> => Result.fail({ name, message: `${name} ${message}` })

/**
 * A `seq` position written as plain decimal digits (`0`, `17`; no sign, no
 * exponent, no spaces) up to `Number.MAX_SAFE_INTEGER`; anything else is
 * undefined.
 */
export const parseSeq = (text: string): number | undefined => {
  if (text.length === 0 || text.length > 16) return undefined
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c < 48 || c > 57) return undefined
  }
  const value = Number(text)
  return value <= Number.MAX_SAFE_INTEGER ? value : undefined
}

/** The one value of `name` (absent when missing or empty); a repeated parameter is invalid. */
const single = (params: URLSearchParams, name: string): Result.Result<string | undefined, InvalidParameter> => {
  const values = params.getAll(name)
  if (values.length > 1) return invalid(name, `is given ${values.length} times; give it once`)
  const value = values[0]
  return Result.succeed(value === undefined || value === "" ? undefined : value)
}

const isId = Schema.is(Id)
const isRunStatus = Schema.is(RunStatus)

/**
 * The filters of `GET /api/runs?thread_id=&status=&limit=`: `thread_id` an
 * id, `status` one of `running completed failed cancelled timed_out`,
 * `limit` 1 to `MAX_LIST_RUNS`. An empty value is the same as none; other
 * parameters are ignored.
 */
export const parseListQuery = (params: URLSearchParams): Result.Result<ListOptions, InvalidParameter> =>
  Result.gen(function*() {
    const thread_id = yield* single(params, "thread_id")
    if (thread_id !== undefined && !isId(thread_id)) {
      return yield* invalid("thread_id", `must be an id (1 to 128 characters of A-Z a-z 0-9 . _ : -), got ${shown(thread_id)}`)
    }
    const status = yield* single(params, "status")
    if (status !== undefined && !isRunStatus(status)) {
      return yield* invalid("status", `must be one of ${RunStatus.literals.join(", ")}, got ${shown(status)}`)
    }
    const limitText = yield* single(params, "limit")
    const limit = limitText === undefined ? undefined : parseSeq(limitText)
    if (limitText !== undefined && (limit === undefined || limit < 1 || limit > MAX_LIST_RUNS)) {
      return yield* invalid("limit", `must be a whole number from 1 to ${MAX_LIST_RUNS} in decimal digits, got ${shown(limitText)}`)
    }
    return { thread_id, status: status as RunStatus | undefined, limit }
  })

/** Where an events request starts, and which parameter said so. */
export interface StartPosition {
  readonly after_seq: number
  readonly name: "after_seq" | "Last-Event-ID"
}

/**
 * Where an events request starts: `Last-Event-ID` (SSE only, when present and
 * not blank) wins over `?after_seq=`; neither means 0 (from the first event).
 */
export const parseAfterSeq = (
  params: URLSearchParams,
  lastEventId: string | undefined
): Result.Result<StartPosition, InvalidParameter> =>
  Result.gen(function*() {
    if (lastEventId !== undefined && lastEventId.trim() !== "") {
      const seq = parseSeq(lastEventId.trim())
      if (seq === undefined) return yield* invalid("Last-Event-ID", `must be an event id (a seq) sent by this stream, got ${shown(lastEventId)}`)
      return { after_seq: seq, name: "Last-Event-ID" } as const
    }
    const text = yield* single(params, "after_seq")
    if (text === undefined) return { after_seq: 0, name: "after_seq" } as const
    const seq = parseSeq(text)
    if (seq === undefined) return yield* invalid("after_seq", `must be a whole number from 0 in decimal digits, got ${shown(text)}`)
    return { after_seq: seq, name: "after_seq" } as const
  })

/** `Accept` asks for an event stream. */
export const wantsEventStream = (accept: string | undefined): boolean => accept !== undefined && /\btext\/event-stream\b/i.test(accept)

/** Lines of a frame as `data:` fields (a JSON frame is one line; any other line break starts another field). */
const dataLines = (frame: string): string => /[\r\n]/.test(frame) ? frame.split(/\r\n|\r|\n/).map((line) => `data: ${line}\n`).join("") : `data: ${frame}\n`

/** One logged event as an SSE message: `id:` its seq, `event:` its type, `data:` its JSON. */
export const encodeEvent = (event: LoggedEvent): string => `id: ${event.seq}\nevent: ${event.type}\n${dataLines(event.frame)}\n`

/** A JSON array of the events' frames (each frame is already JSON text). */
export const encodeJsonArray = (events: ReadonlyArray<LoggedEvent>): string => {
  let body = "["
  for (let i = 0; i < events.length; i++) body += (i === 0 ? "" : ",") + events[i]!.frame
  return body + "]"
}

/**
 * A run's events with `seq > after_seq` as SSE text, one chunk per page of the
 * log: what it holds, then each new event as it is appended, until the run's
 * last event. While nothing new comes for `heartbeatMs`, a `: keepalive`
 * comment. The stream starts with an `: ok` comment. If the run expires or
 * disappears while streamed, the stream ends after a comment saying so (a
 * reconnecting client is then told `410 RUN_EXPIRED`).
 */
export const eventStream = (
  log: RunLog["Service"],
  user_id: string,
  run_id: string,
  after_seq: number,
  heartbeatMs: number
): Stream.Stream<string> =>
  Stream.concat(
    Stream.succeed(OPENING),
    // one chunk of SSE text per page of the log, so that a page is one write
    follow(log, user_id, run_id, after_seq, { idleMs: heartbeatMs }).pipe(
      Stream.mapArray((items) => {
        let text = ""
        for (const item of items) {
          if (item._tag === "Event") text += encodeEvent(item.event)
          else if (item._tag === "Idle") text += KEEPALIVE
        }
        return [text] as const
      }),
      Stream.filter((text) => text.length > 0),
      Stream.catchTags({
        RunExpiredError: (error) => Stream.succeed(`: RUN_EXPIRED: ${error.message}\n\n`),
        RunNotFoundError: (error) => Stream.succeed(`: RUN_NOT_FOUND: ${error.message}\n\n`),
        RunLogUnavailableError: (error) => Stream.succeed(`: LOG_UNAVAILABLE: ${error.message}\n\n`),
        AfterSeqError: (error) => Stream.succeed(`: RUN_NOT_FOUND: ${error.message}\n\n`)
      })
    )
  )
