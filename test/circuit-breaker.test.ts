// The circuit breaker: a database that is down is answered 503 at once instead of by every
// request's own failed connect, and service resumes by itself through a probe.
import t from 'tap'
import type { Test } from 'tap'
import { createServer } from 'node:net'
import type { Socket } from 'node:net'
import Fastify from 'fastify'
import pg from 'pg'
import dbSession from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'
import { startProxy } from './helpers/tcp-proxy.js'

async function breakerApp (t: Test, circuitBreaker: object | boolean, timeouts: { acquireTimeoutMillis?: number, connectTimeoutMillis?: number } = {}) {
  const db = await testDatabase(t)
  const proxy = await startProxy(t, db.url, 'up')
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { connectionString: proxy.urlFor(db.url), circuitBreaker, idleTimeoutMillis: 1, ...timeouts })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  return { app, proxy }
}

t.test('after failureThreshold failed connects the circuit opens: 503 DATABASE_UNAVAILABLE at once, with Retry-After, no connect attempted', async (t) => {
  const { app, proxy } = await breakerApp(t, { failureThreshold: 3, coolDownMillis: 300 })
  t.same((await app.inject('/')).json(), { one: 1 }, 'up: served')
  await new Promise((resolve) => setTimeout(resolve, 20)) // the idle connection times out
  proxy.mode = 'down'

  for (let i = 0; i < 3; i++) {
    const res = await app.inject('/')
    t.equal(res.json().code, 'FST_DB_SESSION_CONNECTION_FAILED', `failure ${i + 1} is a connect that failed`)
  }
  const attempts = proxy.accepted
  t.equal(app.db.stats().circuitOpen, true, 'the circuit is open')
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_DB_SESSION_DATABASE_UNAVAILABLE')
  t.match(res.json().message, /unreachable \(3 connection attempts in a row failed\); failing fast for the next 1 s/)
  t.equal(res.headers['retry-after'], '1')
  t.equal(proxy.accepted, attempts, 'no connection was attempted for it')
  t.equal(app.db.stats().circuitRejections, 1)
  t.match(app.db.metrics(), /^fastify_db_session_circuit_open\{pool="default"\} 1$/m)

  // After the cool-down, one probe; the database is back, so it succeeds and closes the circuit.
  proxy.mode = 'up'
  await new Promise((resolve) => setTimeout(resolve, 320))
  t.same((await app.inject('/')).json(), { one: 1 }, 'the probe is served')
  t.equal(app.db.stats().circuitOpen, false, 'the circuit closed')
  const after = await Promise.all([app.inject('/'), app.inject('/')])
  t.same(after.map((r) => r.statusCode), [200, 200])
})

t.test('a database that accepts connections and never answers opens the circuit too', async (t) => {
  // 600 ms: long enough for the first, real connect on a loaded machine (150 ms failed under load).
  const { app, proxy } = await breakerApp(t, { failureThreshold: 2, coolDownMillis: 5000 }, { acquireTimeoutMillis: 600, connectTimeoutMillis: 800 })
  t.same((await app.inject('/')).json(), { one: 1 }, 'up: served')
  await new Promise((resolve) => setTimeout(resolve, 20)) // the idle connection times out
  proxy.mode = 'silent'
  // Each request hits the acquire deadline (503); the connect behind it gives up at its own
  // timeout a moment later, and that failure counts.
  for (let i = 0; i < 2; i++) {
    const res = await app.inject('/')
    t.equal(res.json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
    await new Promise((resolve) => setTimeout(resolve, 300))
  }
  t.equal(app.db.stats().circuitOpen, true, 'the circuit opened')
  const attempts = proxy.accepted
  const res = await app.inject('/')
  t.equal(res.json().code, 'FST_DB_SESSION_DATABASE_UNAVAILABLE')
  t.equal(proxy.accepted, attempts, 'no connection was attempted for it')
})

t.test('a probe that fails opens the circuit again; while the probe is out, others still fail fast', async (t) => {
  const { app, proxy } = await breakerApp(t, { failureThreshold: 1, coolDownMillis: 200 })
  proxy.mode = 'down'
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_CONNECTION_FAILED')
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_DATABASE_UNAVAILABLE')
  await new Promise((resolve) => setTimeout(resolve, 220))

  const before = proxy.accepted
  const codes = (await Promise.all([app.inject('/'), app.inject('/')])).map((res) => res.json().code).sort()
  // Whichever asked first was the probe: it tried and failed; the other was not let through beside it.
  t.same(codes, ['FST_DB_SESSION_CONNECTION_FAILED', 'FST_DB_SESSION_DATABASE_UNAVAILABLE'])
  t.equal(proxy.accepted, before + 1, 'exactly one connect was attempted')
  t.equal(app.db.stats().circuitOpen, true, 'the failed probe opened the circuit again')
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_DATABASE_UNAVAILABLE', 'for a new cool-down')
})

t.test('acquire timeouts (a full pool) do not open the circuit', async (t) => {
  const db = await testDatabase(t)
  // 500 ms bounds the real connects too (startup check, /hold's): 50 ms failed on a loaded machine.
  const app = await db.app({ circuitBreaker: { failureThreshold: 1, coolDownMillis: 60000 }, maxConnections: 1, acquireTimeoutMillis: 500 })
  let release!: () => void
  const held = new Promise<void>((resolve) => { release = resolve })
  app.get('/hold', async (request) => {
    await request.db.selectNoFrom((eb) => eb.val(1).as('one')).execute()
    await held
    return { ok: true }
  })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  const holding = app.inject('/hold')
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT', 'still a timeout, not a fail-fast')
  release()
  t.equal((await holding).statusCode, 200)
  t.same((await app.inject('/')).json(), { one: 1 })
  t.equal(app.db.stats().circuitRejections, 0)
})

t.test('circuitBreaker: true takes the defaults; bad values are refused', async (t) => {
  const { app } = await breakerApp(t, true)
  t.same((await app.inject('/')).json(), { one: 1 })
  const cases: Array<[unknown, RegExp]> = [
    [{ failureThreshold: 0 }, /circuitBreaker\.failureThreshold must be an integer of at least 1/],
    [{ coolDownMillis: -5 }, /circuitBreaker\.coolDownMillis must be an integer of at least 1/],
    [{ threshold: 2 }, /unknown option 'circuitBreaker\.threshold'/],
    ['on', /circuitBreaker must be true, false or an object like \{"failureThreshold":5,"coolDownMillis":5000\}/]
  ]
  for (const [circuitBreaker, message] of cases) {
    const bad = Fastify()
    await t.rejects(async () => { await bad.register(dbSession, { connectionString: 'postgres://127.0.0.1:1/none', circuitBreaker: circuitBreaker as never }).ready() }, { code: 'FST_DB_SESSION_INVALID_OPTION', message })
  }
})

t.test('a connect that fails after the acquire deadline still counts against the database', async (t) => {
  const sockets = new Set<Socket>()
  const silent = createServer((socket) => { sockets.add(socket) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => silent.close(resolve)))
  const { port } = silent.address() as { port: number }
  // A pool of the user's: its clients have no connect timeout, so the deadline is ours alone.
  const pool = new pg.Pool({ connectionString: `postgres://nobody@127.0.0.1:${port}/none`, max: 1 })
  pool.on('error', () => {})
  t.teardown(() => pool.end())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { pool, acquireTimeoutMillis: 100, startupCheck: false, circuitBreaker: { failureThreshold: 1, coolDownMillis: 5000 } })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
  t.equal(app.db.stats().circuitOpen, false, 'a timeout alone says nothing of the database')
  // The connect behind the timeout now fails.
  for (const socket of sockets) socket.destroy()
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(app.db.stats().circuitOpen, true, 'its failure opened the circuit')
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_DATABASE_UNAVAILABLE')
})

t.test('a probe whose connect outlives its acquire deadline stays the only probe until its connect ends; its late success closes the circuit', async (t) => {
  const { app, proxy } = await breakerApp(t, { failureThreshold: 1, coolDownMillis: 200 }, { acquireTimeoutMillis: 100, connectTimeoutMillis: 3000 })
  proxy.mode = 'down'
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_CONNECTION_FAILED')
  t.equal(app.db.stats().circuitOpen, true)
  await new Promise((resolve) => setTimeout(resolve, 220))
  // The database is back, but slow to accept connections: the probe's connect takes 600 ms.
  proxy.mode = 'up'
  proxy.connectDelayMillis = 600
  const before = proxy.accepted
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT', 'the probe answered at its deadline')
  t.equal((await app.inject('/')).json().code, 'FST_DB_SESSION_DATABASE_UNAVAILABLE', 'no second probe while the first one\'s connect is under way')
  t.equal(proxy.accepted, before + 1, 'one connect in all')
  t.equal(await eventually(async () => app.db.stats().circuitOpen, (open) => !open), false, 'the late connect closed the circuit')
  proxy.connectDelayMillis = 0
  t.same((await app.inject('/')).json(), { one: 1 }, 'served again')
})
