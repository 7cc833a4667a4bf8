// Far more concurrent requests than connections, over real HTTP. With a deadline that leaves room,
// every request is served in turn; with a tight one, the excess is turned away with 503
// FST_DB_SESSION_ACQUIRE_TIMEOUT and writes nothing. Either way nobody hangs, the pool never grows
// past its size, and nothing is left checked out or inside a transaction.
// (test/acquire-timeout.test.ts covers one request held against a pool of one, and user pools.)
import t from 'tap'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { eventually, testDatabase } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'
import { postItem } from './helpers/util.js'

type Test = Parameters<Parameters<typeof t.test>[0]>[0]

const POOL_SIZE = 5
const CONCURRENT = 100
/** How long each request keeps its transaction (and connection) after its insert. */
const HOLD = 50
/** Room on top of the deadline and the hold for a slow, shared two-core machine. */
const SLACK = 1500
/** The client's side: 100 fetches from the server's own process take their time on a loaded machine, but not this long. */
const CLIENT_LIMIT = 10_000

interface Outcome {
  name: string
  status: number
  code: string | undefined
  message: string | undefined
  retryAfter: string | null
  /** From the client's send to the body read. */
  millis: number
  /** Fastify's reply.elapsedTime: from the request's arrival to the response sent. */
  serverMillis: number
}

/** An app whose POST /items inserts a row named by the body, then holds its transaction HOLD ms; listening on a free port. */
async function holdingApp (db: TestDatabase, acquireTimeoutMillis: number): Promise<{ app: FastifyInstance, base: string, served: Map<string, number> }> {
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL UNIQUE)')
  const app = await db.app({ maxConnections: POOL_SIZE, acquireTimeoutMillis })
  // The startup check's own connection has ended, but its backend may still be leaving
  // pg_stat_activity: counted in a burst's peak, it made a sixth backend on a loaded machine.
  await eventually(() => db.connections(), (n) => n === 0)
  const served = new Map<string, number>()
  app.addHook('onResponse', (request, reply, done) => {
    served.set((request.body as { name: string }).name, reply.elapsedTime)
    done()
  })
  app.post('/items', async (request, reply) => {
    const row = await request.db.insertInto('items').values(request.body as { name: string }).returningAll().executeTakeFirstOrThrow()
    await sleep(HOLD)
    return reply.code(201).send(row)
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  return { app, base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, served }
}

async function send (base: string, name: string): Promise<Omit<Outcome, 'serverMillis'>> {
  const started = Date.now()
  const answer = await postItem(base, name)
  return { name, ...answer, millis: Date.now() - started }
}

/**
 * Sends CONCURRENT requests at once and waits for every answer, while watching the pool's queue
 * and this database's backends; returns the answers and the highest values seen.
 */
async function burst (db: TestDatabase, app: FastifyInstance, base: string, served: Map<string, number>, prefix: string) {
  const peak = { waiting: 0, backends: 0 }
  const watching = new AbortController()
  const watcher = (async () => {
    while (!watching.signal.aborted) {
      peak.waiting = Math.max(peak.waiting, app.db.stats().waiting)
      peak.backends = Math.max(peak.backends, await db.connections())
      await sleep(5)
    }
  })()
  const started = Date.now()
  const answers = await Promise.all(Array.from({ length: CONCURRENT }, (_, i) => send(base, `${prefix}-${i}`)))
  const millis = Date.now() - started
  watching.abort()
  await watcher
  // onResponse runs once the response is out, which the client may see first.
  await eventually(async () => answers.every((answer) => served.has(answer.name)), (all) => all)
  const outcomes: Outcome[] = answers.map((answer) => ({ ...answer, serverMillis: served.get(answer.name) ?? Infinity }))
  return { outcomes, peak, millis }
}

/** What must hold once any burst is over: nothing checked out, waiting, or left in a transaction. */
async function settled (t: Test, db: TestDatabase, app: FastifyInstance): Promise<void> {
  const stats = await eventually(async () => app.db.stats(), (now) => now.active === 0)
  t.equal(stats.active, 0, 'no connection stays checked out')
  t.equal(stats.waiting, 0, 'nobody waits for one')
  t.equal(await db.idleInTransaction(), 0, 'no backend is left idle in a transaction')
  t.ok(await db.connections() <= POOL_SIZE, 'no more backends than the pool\'s size')
}

async function itemNames (db: TestDatabase): Promise<Set<string>> {
  const { rows } = await db.query('SELECT name FROM items')
  return new Set(rows.map((row: { name: string }) => row.name))
}

t.test(`${CONCURRENT} concurrent requests, ${POOL_SIZE} connections, a generous deadline: all are served in turn and all rows are there`, async (t) => {
  const db = await testDatabase(t)
  const acquireTimeout = 20_000
  const { app, base, served } = await holdingApp(db, acquireTimeout)

  const { outcomes, peak, millis } = await burst(db, app, base, served, 'generous')
  t.same(outcomes.filter((outcome) => outcome.status !== 201), [], 'every request got 201')
  const slowest = Math.max(...outcomes.map((outcome) => outcome.serverMillis))
  const slowestClient = Math.max(...outcomes.map((outcome) => outcome.millis))
  t.comment(`the burst took ${millis} ms; slowest answer ${slowest.toFixed(0)} ms in the server, ${slowestClient} ms for its client; at most ${peak.waiting} waiting, ${peak.backends} backends`)
  // CONCURRENT / POOL_SIZE rounds of HOLD ms at the least: the pool really made them take turns.
  t.ok(millis >= (CONCURRENT / POOL_SIZE) * HOLD * 0.9, `they took turns on ${POOL_SIZE} connections (${millis} ms)`)
  t.ok(slowestClient < acquireTimeout, `nobody came near the deadline (slowest ${slowestClient} ms)`)
  t.ok(peak.waiting > 0, `requests queued for a connection (at most ${peak.waiting} at once)`)
  t.ok(peak.backends <= POOL_SIZE, `never more than ${POOL_SIZE} backends (at most ${peak.backends})`)

  const rows = await itemNames(db)
  t.equal(rows.size, CONCURRENT, 'one row per request')
  t.same(outcomes.filter((outcome) => !rows.has(outcome.name)), [], 'every request\'s row is present')
  const stats = app.db.stats()
  t.equal(stats.commits, CONCURRENT)
  t.equal(stats.acquires, CONCURRENT)
  t.equal(stats.acquireTimeouts, 0, 'no acquire timed out')
  t.equal(stats.rollbacks, 0)
  await settled(t, db, app)
})

t.test(`${CONCURRENT} concurrent requests, ${POOL_SIZE} connections, a tight deadline: the excess gets 503 ACQUIRE_TIMEOUT fast and writes nothing`, async (t) => {
  const db = await testDatabase(t)
  const acquireTimeout = 100
  const { app, base, served } = await holdingApp(db, acquireTimeout)
  // The pool opens its connections first: a connection still being opened when the deadline passes
  // fails as CONNECTION_FAILED, and this test is about waiting for a connection in use.
  // On a loaded machine opening one can take longer than the deadline itself: try again, a few times.
  const warm = async (tries: number): Promise<void> => {
    await app.db.transaction((trx) => trx.selectNoFrom((eb) => eb.val(1).as('one')).execute().then(() => sleep(HOLD)))
      .catch((error: unknown) => { if (tries <= 1) throw error; return warm(tries - 1) })
  }
  await Promise.all(Array.from({ length: POOL_SIZE }, () => warm(5)))
  t.equal(app.db.stats().idle, POOL_SIZE, `the pool holds ${POOL_SIZE} idle connections`)
  const before = app.db.stats()

  const { outcomes, peak, millis } = await burst(db, app, base, served, 'tight')
  const created = outcomes.filter((outcome) => outcome.status === 201)
  const refused = outcomes.filter((outcome) => outcome.status === 503)
  t.comment(`the burst took ${millis} ms (slowest answer in the server ${Math.max(...outcomes.map((outcome) => outcome.serverMillis)).toFixed(0)} ms): ${created.length} × 201, ${refused.length} × 503; at most ${peak.waiting} waiting, ${peak.backends} backends`)
  t.equal(created.length + refused.length, CONCURRENT, 'every request got 201 or 503')
  t.ok(created.length >= POOL_SIZE, `at least a connection's worth were served (${created.length})`)
  t.ok(refused.length > 0, `the excess was turned away (${refused.length})`)
  t.same(refused.filter((outcome) => outcome.code !== 'FST_DB_SESSION_ACQUIRE_TIMEOUT'), [], 'each 503 has the code FST_DB_SESSION_ACQUIRE_TIMEOUT')
  t.same(refused.filter((outcome) => outcome.retryAfter !== '1'), [], 'each 503 has Retry-After: 1')
  t.same(refused.filter((outcome) => !outcome.message?.includes(`within ${acquireTimeout} ms`)), [], 'each 503 names the deadline')

  // Timing, in the server: a 503 comes at the deadline, not before; nobody waits much past the
  // deadline and the work. The client's view adds the queueing of 100 fetches on a loaded machine.
  const earliest503 = Math.min(...refused.map((outcome) => outcome.serverMillis))
  t.ok(earliest503 >= acquireTimeout - 10, `no 503 came before the deadline (earliest ${earliest503.toFixed(0)} ms)`)
  const slowest = Math.max(...outcomes.map((outcome) => outcome.serverMillis))
  t.ok(slowest <= acquireTimeout + HOLD + SLACK, `nobody hung: every response within ${acquireTimeout + HOLD + SLACK} ms of its arrival (slowest ${slowest.toFixed(0)} ms)`)
  const slowestClient = Math.max(...outcomes.map((outcome) => outcome.millis))
  t.ok(slowestClient <= CLIENT_LIMIT, `every client had its answer within ${CLIENT_LIMIT} ms (slowest ${slowestClient} ms)`)
  t.ok(peak.backends <= POOL_SIZE, `never more than ${POOL_SIZE} backends (at most ${peak.backends})`)

  const rows = await itemNames(db)
  t.same(created.filter((outcome) => !rows.has(outcome.name)), [], 'every 201\'s row is present')
  t.same(refused.filter((outcome) => rows.has(outcome.name)), [], 'no 503\'s row is')
  t.equal(rows.size, created.length, 'and nothing else')
  const stats = app.db.stats()
  t.equal(stats.acquireTimeouts - before.acquireTimeouts, refused.length, 'stats().acquireTimeouts counts every 503')
  t.equal(stats.commits - before.commits, created.length, 'one commit per 201')
  t.equal(stats.acquires - before.acquires, created.length, 'a 503 never got a connection')
  t.equal(stats.rollbacks - before.rollbacks, 0, 'and so had nothing to roll back')
  await settled(t, db, app)

  // The pool serves again at once.
  const after = await send(base, 'after')
  t.equal(after.status, 201, 'the next request is served')
  t.ok((await itemNames(db)).has('after'))
})
