/**
 * Issue 8's lifecycle suite (test/fixtures/lifecycle-suite.ts: stop, limits,
 * idempotent starts, isolation under load) on the Redis server layer (issue
 * 12): the same assertions as in memory, against this file's own
 * `redis-server` (emptied before each test). Skipped with the install command
 * when redis-server is missing.
 */
import { lifecycleRegistry, lifecycleSuite } from "./fixtures/lifecycle-suite.ts"
import { describeRedis } from "./fixtures/redisLayers.ts"
import * as TestServer from "./fixtures/testServer.ts"

describeRedis("lifecycle on Redis", () => {
  lifecycleSuite("redis", (settings) => TestServer.serverLayerRedis(settings, { registry: lifecycleRegistry }))
})

describeRedis("lifecycle on two instances sharing Redis", () => {
  // each connection and HTTP request goes to the next instance in turn, as behind a load balancer
  lifecycleSuite("redis x2", (settings) => TestServer.serverLayerRedisCluster(settings, { registry: lifecycleRegistry }))
})
