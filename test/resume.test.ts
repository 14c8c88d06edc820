/**
 * Issue 10 over real sockets, on the in-memory server: the shared resume suite
 * (test/fixtures/resume-suite.ts; the same runs on Redis in
 * test/resume-redis.test.ts).
 */
import { resumeSuite } from "./fixtures/resume-suite.ts"
import * as TestServer from "./fixtures/testServer.ts"

resumeSuite("memory", (settings) => TestServer.serverLayer(settings))
