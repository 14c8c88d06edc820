/**
 * Issue 10's resume suite (test/fixtures/resume-suite.ts) on the Redis server
 * layer (issue 12): the same assertions as in memory, against this file's own
 * `redis-server` (emptied before each test). Skipped with the install command
 * when redis-server is missing.
 */
import { describeRedis } from "./fixtures/redisLayers.ts"
import { resumeSuite } from "./fixtures/resume-suite.ts"
import * as TestServer from "./fixtures/testServer.ts"

describeRedis("resume on Redis", () => {
  resumeSuite("redis", (settings) => TestServer.serverLayerRedis(settings))
})
