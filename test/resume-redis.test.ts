/**
 * Issue 10's resume suite (test/fixtures/resume-suite.ts) on the Redis server
 * layer (issue 12), with the same assertions as in memory, against this
 * file's own `redis-server` (emptied before each test): on one instance, and
 * on two instances sharing that Redis with each connection (and each
 * unwatched run) going to the next instance in turn, as behind a load
 * balancer, so that most resumes read a run that executes on the other one.
 *
 * To keep `npm test` short, the Redis copies run `REDIS_ITERATIONS` random-cut
 * sessions (AGENTWIRE_RESUME_REDIS_ITERATIONS), and leave out the long tests
 * about the connection's and the process's own state (socket pacing, the
 * process budget, replaced followers: the same code over either log; they pass
 * on Redis too, e.g. with AGENTWIRE_RESUME_REDIS_LONG=1); the two-instance copy
 * also leaves the late replay to the one-instance copy. Skipped with the
 * install command when redis-server is missing.
 */
import { describeRedis } from "./fixtures/redisLayers.ts"
import { type LongTest, resumeSuite } from "./fixtures/resume-suite.ts"
import * as TestServer from "./fixtures/testServer.ts"

const REDIS_ITERATIONS = Number(process.env.AGENTWIRE_RESUME_REDIS_ITERATIONS ?? 40)
const all = process.env.AGENTWIRE_RESUME_REDIS_LONG === "1"
const connectionState: ReadonlyArray<LongTest> = all ? [] : ["slowReader", "awayReaders", "replaced"]

describeRedis("resume on Redis", () => {
  resumeSuite("redis", (settings) => TestServer.serverLayerRedis(settings), { iterations: REDIS_ITERATIONS, without: connectionState })
})

describeRedis("resume on two instances sharing Redis", () => {
  resumeSuite("redis x2", (settings) => TestServer.serverLayerRedisCluster(settings), {
    iterations: REDIS_ITERATIONS,
    without: all ? [] : [...connectionState, "lateReplay"]
  })
})
