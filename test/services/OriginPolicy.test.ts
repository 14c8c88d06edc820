import { describe, expect, it } from "@effect/vitest"
import { Option } from "effect"
import fc from "fast-check"
import { isOriginAllowed, normalizeOrigin } from "../../src/services/OriginPolicy.ts"

const listed = { allowedOrigins: Option.some(["https://app.example.com", "http://localhost:5173", "capacitor://localhost"]) }
const open = { allowedOrigins: Option.none() }

describe("normalizeOrigin", () => {
  it("normalises case and default ports", () => {
    expect(normalizeOrigin("HTTPS://App.Example.COM")).toBe("https://app.example.com")
    expect(normalizeOrigin("https://app.example.com:443")).toBe("https://app.example.com")
    expect(normalizeOrigin("http://app.example.com:80")).toBe("http://app.example.com")
    expect(normalizeOrigin("https://app.example.com:8443")).toBe("https://app.example.com:8443")
    expect(normalizeOrigin("http://127.0.0.1:8080")).toBe("http://127.0.0.1:8080")
    expect(normalizeOrigin("http://[::1]:3000")).toBe("http://[::1]:3000")
    expect(normalizeOrigin("https://bücher.example")).toBe("https://xn--bcher-kva.example")
    expect(normalizeOrigin("Capacitor://LocalHost")).toBe("capacitor://localhost")
  })

  it("refuses what is not an origin", () => {
    for (
      const text of [
        "",
        "*",
        "null",
        "app.example.com",
        "https://",
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://app.example.com?q=1",
        "https://app.example.com#x",
        "https://user:pw@app.example.com",
        "https://*.example.com",
        "https://app.example.com:99999",
        "https://app example.com"
      ]
    ) expect([text, normalizeOrigin(text)]).toEqual([text, undefined])
  })

  it("is idempotent and never throws, on arbitrary text and on URL-like text", () => {
    const urlish = fc.tuple(fc.constantFrom("http://", "https://", "HTTPS://", "x-app://", ""), fc.webUrl(), fc.string({ maxLength: 20 }))
      .map(([scheme, url, tail]) => `${scheme}${url.replace(/^https?:\/\//, "")}${tail}`)
    fc.assert(fc.property(fc.oneof(fc.string({ maxLength: 60 }), urlish), (text) => {
      const once = normalizeOrigin(text)
      if (once !== undefined) expect(normalizeOrigin(once)).toBe(once)
    }))
  })

  it("accepts every generated http(s) origin and keeps its host and non-default port", () => {
    fc.assert(fc.property(
      fc.constantFrom("http", "https"),
      fc.domain(),
      fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }),
      (scheme, host, port) => {
        const text = port === undefined ? `${scheme}://${host}` : `${scheme}://${host}:${port}`
        const isDefault = port === (scheme === "http" ? 80 : 443)
        expect(normalizeOrigin(text)).toBe(port === undefined || isDefault ? `${scheme}://${host}` : text)
      }
    ))
  })
})

describe("isOriginAllowed", () => {
  it("allows everything when no list is configured", () => {
    expect(isOriginAllowed(open, "https://evil.example.com")).toBe(true)
    expect(isOriginAllowed(open, undefined)).toBe(true)
  })

  it("allows a handshake without Origin (non-browser clients send none)", () => {
    expect(isOriginAllowed(listed, undefined)).toBe(true)
  })

  it("allows listed origins in any spelling and refuses the rest", () => {
    expect(isOriginAllowed(listed, "https://app.example.com")).toBe(true)
    expect(isOriginAllowed(listed, "https://APP.example.com:443")).toBe(true)
    expect(isOriginAllowed(listed, "http://localhost:5173")).toBe(true)
    expect(isOriginAllowed(listed, "capacitor://localhost")).toBe(true)
    expect(isOriginAllowed(listed, "http://app.example.com")).toBe(false)
    expect(isOriginAllowed(listed, "https://app.example.com.evil.com")).toBe(false)
    expect(isOriginAllowed(listed, "https://evil.com")).toBe(false)
    expect(isOriginAllowed(listed, "http://localhost:5174")).toBe(false)
    expect(isOriginAllowed(listed, "null")).toBe(false)
    expect(isOriginAllowed(listed, "")).toBe(false)
    expect(isOriginAllowed(listed, "https://app.example.com/")).toBe(false)
  })
})
