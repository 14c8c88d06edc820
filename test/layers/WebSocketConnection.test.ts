import { describe, expect, it } from "@effect/vitest"
import type { IncomingMessage } from "node:http"
import { makeSend, MAX_BUFFERED_BYTES, selectProtocol, tokenOf } from "../../src/layers/WebSocketConnection.ts"

const fakeWs = (bufferedAmount = 0, readyState = 1) => {
  const sent: Array<string> = []
  const closes: Array<[number, string]> = []
  return {
    sent,
    closes,
    ws: { readyState, bufferedAmount, send: (f: string) => void sent.push(f), close: (c: number, r: string) => void closes.push([c, r]) }
  }
}

const fakeSocket = () => {
  const calls: Array<string> = []
  let writableLength = 0
  return {
    calls,
    setLength: (n: number) => void (writableLength = n),
    socket: {
      cork: () => void calls.push("cork"),
      uncork: () => void calls.push("uncork"),
      get writableLength() {
        return writableLength
      }
    }
  }
}

const nextTick = () => new Promise<void>((resolve) => process.nextTick(resolve))

describe("makeSend", () => {
  it("sends while the socket keeps up; closes with 1013 once more than 8 MiB wait", () => {
    const ok = fakeWs(MAX_BUFFERED_BYTES)
    makeSend(ok.ws)("a")
    expect(ok.sent).toEqual(["a"])

    const slow = fakeWs(MAX_BUFFERED_BYTES + 1)
    makeSend(slow.ws)("b")
    expect(slow.sent).toEqual([])
    expect(slow.closes).toEqual([[1013, "client too slow: send buffer full"]])
  })

  it("drops frames for a socket that is no longer open", () => {
    const closing = fakeWs(0, 2)
    makeSend(closing.ws)("c")
    expect(closing.sent).toEqual([])
    expect(closing.closes).toEqual([])
  })

  it("corks once per tick, uncorks on the next tick, and flushes every 64 KiB", async () => {
    const target = fakeWs()
    const tcp = fakeSocket()
    const send = makeSend(target.ws, tcp.socket)
    send("1")
    send("2")
    expect(tcp.calls).toEqual(["cork"])
    tcp.setLength(64 * 1024)
    send("3")
    expect(tcp.calls).toEqual(["cork", "uncork", "cork"])
    tcp.setLength(0)
    await nextTick()
    expect(tcp.calls).toEqual(["cork", "uncork", "cork", "uncork"])
    send("4")
    expect(tcp.calls.at(-1)).toBe("cork")
    expect(target.sent).toEqual(["1", "2", "3", "4"])
  })
})

const request = (headers: Record<string, string>) => ({ headers }) as unknown as IncomingMessage
const url = (query = "") => new URL(`http://localhost/ws${query}`)

describe("handshake", () => {
  it("takes the token from the Authorization header, then the jwt. subprotocol, then ?token", () => {
    expect(tokenOf(request({ authorization: "Bearer aaa" }), url("?token=ccc"))).toBe("aaa")
    expect(tokenOf(request({ "sec-websocket-protocol": "agentwire.v1, jwt.bbb" }), url("?token=ccc"))).toBe("bbb")
    expect(tokenOf(request({}), url("?token=ccc"))).toBe("ccc")
    expect(tokenOf(request({ authorization: "Basic xyz" }), url())).toBeUndefined()
    expect(tokenOf(request({ "sec-websocket-protocol": "jwt." }), url("?token="))).toBeUndefined()
  })

  it("selects agentwire.v1 when offered, else echoes jwt.<token>, else none", () => {
    expect(selectProtocol(new Set(["jwt.t", "agentwire.v1"]))).toBe("agentwire.v1")
    expect(selectProtocol(new Set(["jwt.t"]))).toBe("jwt.t")
    expect(selectProtocol(new Set(["chat"]))).toBe(false)
  })
})
