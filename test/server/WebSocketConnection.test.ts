import { describe, expect, it } from "@effect/vitest"
import type { IncomingMessage } from "node:http"
import { selectProtocol, tokenOf } from "../../src/server/WebSocketConnection.ts"

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
