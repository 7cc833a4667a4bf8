// connectTimeoutMillis: a new connection of the owned pool is made for the pool, not for the
// request that asked first. That request waits no longer than acquireTimeoutMillis; the
// connection, if it is made after that, serves the next one.
import t from 'tap'
import type { Test } from 'tap'
import Fastify from 'fastify'
import dbSession from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'
import { startSilentServer } from './helpers/silent-server.js'
import { startProxy } from './helpers/tcp-proxy.js'
import { capturedLogs } from './helpers/util.js'

t.test('a connect slower than the acquire deadline: the request gets ACQUIRE_TIMEOUT, the connection is made anyway and serves the next request', async (t) => {
  const db = await testDatabase(t)
  const proxy = await startProxy(t, db.url)
  // Each new connection reaches the database 1500 ms late: far longer than the 100 ms deadline.
  // Were the connect bounded by the deadline, every connect would fail and the pool never serve.
  proxy.connectDelayMillis = 1500
  const app = await db.app({ connectionString: proxy.urlFor(db.url), maxConnections: 1, acquireTimeoutMillis: 100, startupCheck: false })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  const started = Date.now()
  const first = await app.inject('/')
  const took = Date.now() - started
  t.equal(first.statusCode, 503)
  t.equal(first.json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT', 'the deadline answered, not a failed connect')
  t.ok(took < 1200, `answered at its deadline, before the connection was made (${took} ms)`)
  t.equal(app.db.pool.totalCount, 1, 'the connection is still being made')
  t.equal(await eventually(async () => app.db.pool.idleCount, (n) => n === 1), 1, 'made, and back in the pool')
  t.same((await app.inject('/')).json(), { one: 1 }, 'the next request is served on it')
  t.equal(app.db.stats().connectionsCreated, 1, 'no other connection was made')
  t.equal(proxy.accepted, 1)
  t.equal(app.db.stats().acquireTimeouts, 1)
})

t.test('by default the connect timeout is not a short acquire deadline: a silent server is still being waited for 1 s later', async (t) => {
  const silent = await startSilentServer(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { connectionString: silent.url, maxConnections: 1, acquireTimeoutMillis: 150, startupCheck: false })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  const res = await app.inject('/')
  t.equal(res.json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
  await new Promise((resolve) => setTimeout(resolve, 1000))
  t.equal(silent.accepted, 1)
  t.equal(silent.closed, 0, 'the connect goes on (its timeout is 5000 ms, the default floor)')
  t.equal(app.db.pool.totalCount, 1)
})

/** An app on a server that never answers, one connection, a 150 ms deadline, and a circuit breaker that opens at one failure. */
async function silentApp (t: Test, options: { connectTimeoutMillis?: number, closeTimeoutMillis?: number }) {
  const silent = await startSilentServer(t)
  const logs = capturedLogs()
  const app = Fastify(logs.options)
  t.teardown(() => app.close())
  await app.register(dbSession, {
    connectionString: silent.url,
    maxConnections: 1,
    acquireTimeoutMillis: 150,
    startupCheck: false,
    circuitBreaker: { failureThreshold: 1, coolDownMillis: 60_000 },
    ...options
  })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  return { app, silent, logs }
}

t.test('a connect that fails after its request timed out: logged, counted by the circuit breaker, and its slot freed', async (t) => {
  const { app, logs } = await silentApp(t, { connectTimeoutMillis: 400 })
  const res = await app.inject('/')
  t.equal(res.json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
  t.equal(app.db.stats().circuitOpen, false, 'a timeout says nothing of the database')
  const line = await eventually(async () => logs.lines.find((entry) => /failed after the request it was made for had timed out/.test(entry.msg)), (found) => found !== undefined)
  t.ok(line, 'the late failure is logged')
  t.match(line?.err?.message, /timeout/, 'with its cause')
  t.equal(app.db.stats().circuitOpen, true, 'the failed connect counted against the database')
  t.equal(app.db.pool.totalCount, 0, 'its slot is free')
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_DATABASE_UNAVAILABLE')
})

t.test('close() ends a connect still under way at once, instead of leaving it open until its connect timeout', async (t) => {
  const { app, silent, logs } = await silentApp(t, { closeTimeoutMillis: 300 })
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
  t.equal(silent.closed, 0, 'the connect is under way')
  const started = Date.now()
  await app.close()
  const took = Date.now() - started
  t.equal(app.db.pool.totalCount, 0, 'the pool ended')
  t.equal(await eventually(async () => silent.closed, (n) => n === 1, 1000), 1, 'its socket was closed by close(), not 5 s later by its connect timeout')
  t.ok(took < 1000, `close() took ${took} ms`)
  t.equal(app.db.stats().circuitOpen, false, 'a connect close() cut short says nothing of the database')
  t.same(logs.lines.filter((line) => /timed out/.test(line.msg)), [], 'and is not logged as a failure')
})

t.test('the startup check gives each attempt connectTimeoutMillis, as the pool\'s connects get, not the shorter acquire deadline', async (t) => {
  const db = await testDatabase(t)
  const proxy = await startProxy(t, db.url)
  proxy.connectDelayMillis = 400
  const started = Date.now()
  const app = await db.app({ connectionString: proxy.urlFor(db.url), acquireTimeoutMillis: 200, connectTimeoutMillis: 3000 })
  t.equal(proxy.accepted, 1, `registered at the first attempt (${Date.now() - started} ms), not refused after five of 200 ms`)
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT', 'a request still waits at most 200 ms')
  t.equal(await eventually(async () => app.db.pool.idleCount, (n) => n === 1), 1)
  t.same((await app.inject('/')).json(), { one: 1 })
})
