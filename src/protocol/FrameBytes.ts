/**
 * The UTF-8 byte length of an encoded frame, computed once per frame on the
 * path of a live event: the run emitter hands one string to the run log and
 * to every socket of the user, and each of them needs its length (the log for
 * its byte budget, each socket for its bounds). The last frame asked about is
 * remembered and compared by identity first (one pointer check), so only the
 * first caller scans the text.
 *
 * @module
 */

let lastFrame = ""
let lastBytes = 0

/** `Buffer.byteLength(frame, "utf8")`, remembered for the last frame asked about. */
export const utf8Length = (frame: string): number => {
  if (frame !== lastFrame) {
    lastFrame = frame
    lastBytes = Buffer.byteLength(frame)
  }
  return lastBytes
}
