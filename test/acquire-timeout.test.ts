// An exhausted pool answers 503 quickly, whoever owns the pool; an unreachable database too.
import t from 'tap'
import { connect, createServer } from 'node:net'
import type { Socket } from 'node:net'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import pg from 'pg'
import { sql } from 'kysely'
import dbSession from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'
import { deferred } from './helpers/util.js'
import type { TestDatabase } from './helpers/database.js'

type Test = Parameters<Parameters<typeof t.test>[0]>[0]

/** GET /hold queries, then keeps its transaction (and the pool's only connection) until released. */
function addRoutes (app: FastifyInstance) {
  const holding = deferred()
  const release = deferred()
  app.get('/hold', async (request) => {
    await sql`SELECT 1`.execute(request.db)
    holding.resolve()
    await release.promise
    return { held: true }
  })
  app.get('/query', async (request) => {
    const { rows } = await sql<{ one: number }>`SELECT 1 AS one`.execute(request.db)
    return rows[0]
  })
  return { holding, release }
}

/** A holds the only connection; B must fail fast with 503; then A finishes and everything is back. */
async function exhaust (t: Test, db: TestDatabase, app: FastifyInstance, millis: number): Promise<void> {
  const { holding, release } = addRoutes(app)
  const a = app.inject({ method: 'GET', url: '/hold' })
  await holding.promise
  t.equal(app.db.stats().active, 1, 'A holds the only connection')
  t.equal(await db.idleInTransaction(), 1)

  const started = Date.now()
  const b = await app.inject({ method: 'GET', url: '/query' })
  const elapsed = Date.now() - started
  t.equal(b.statusCode, 503, 'B is told the service is unavailable')
  t.equal(b.json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
  t.match(b.json().message, `within ${millis} ms`, 'the message names the deadline')
  t.equal(b.headers['retry-after'], String(Math.ceil(millis / 1000)), 'a retry-after header tells the client when to retry')
  t.ok(elapsed >= millis - 20, `B waited for the deadline (${elapsed} ms)`)
  t.ok(elapsed < 800, `B failed well under a second (${elapsed} ms)`)
  t.equal(app.db.stats().acquireTimeouts, 1)
  t.equal(app.db.stats().acquires, 1, 'B never got a connection')

  release.resolve()
  const done = await a
  t.equal(done.statusCode, 200, 'A finishes normally')
  t.same(done.json(), { held: true })
  t.equal(await eventually(async () => app.db.stats().active, (n) => n === 0), 0, 'no connection stays checked out')
  t.equal(app.db.stats().waiting, 0, 'nobody waits on the pool')
  t.equal(app.db.stats().commits, 1)
  t.equal(await db.idleInTransaction(), 0)
  t.equal(await db.connections(), 1, 'still just one connection: the pool never grew past its size')

  // The pool serves again once it has a free connection.
  const again = await app.inject({ method: 'GET', url: '/query' })
  t.equal(again.statusCode, 200)
  t.same(again.json(), { one: 1 })
  t.equal(app.db.stats().acquireTimeouts, 1)
}

async function userPoolApp (t: Test, pool: pg.Pool, options: object): Promise<FastifyInstance> {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { pool, ...options })
  return app
}

t.test('the plugin\'s own pool of 1: a second request gets 503 ACQUIRE_TIMEOUT after acquireTimeoutMillis', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1, acquireTimeoutMillis: 200 })
  await exhaust(t, db, app, 200)
  t.equal(app.db.stats().max, 1)
})

t.test('a user pool of 1 that waits forever: the plugin\'s acquireTimeoutMillis applies, and the pool is never ended', async (t) => {
  const db = await testDatabase(t)
  const pool = new pg.Pool({ connectionString: db.url, max: 1 })
  // A real owner listens: an idle client that fails must not crash the process once the plugin is gone.
  pool.on('error', () => {})
  t.teardown(async () => {
    if (!pool.ending) await pool.end()
    await eventually(() => db.connections(), (n) => n === 0, 1000)
  })
  const app = await userPoolApp(t, pool, { acquireTimeoutMillis: 200 })
  t.equal(app.db.pool, pool, 'the plugin uses the given pool')
  await exhaust(t, db, app, 200)

  await app.close()
  t.equal(pool.ending, false, 'the plugin did not end the user\'s pool')
  const { rows } = await pool.query('SELECT 1 AS one')
  t.same(rows, [{ one: 1 }], 'the user\'s pool still answers after app.close()')
  t.equal(await db.connections(), 1, 'its connection stayed open')
  await pool.end()
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0, 'ending it is up to its owner')
})

t.test('a user pool with its own connectionTimeoutMillis: the same 503', async (t) => {
  const db = await testDatabase(t)
  const pool = new pg.Pool({ connectionString: db.url, max: 1, connectionTimeoutMillis: 200 })
  // A real owner listens: an idle client that fails must not crash the process once the plugin is gone.
  pool.on('error', () => {})
  t.teardown(async () => {
    if (!pool.ending) await pool.end()
    await eventually(() => db.connections(), (n) => n === 0, 1000)
  })
  const app = await userPoolApp(t, pool, {})
  await exhaust(t, db, app, 200)
  await app.close()
  t.same((await pool.query('SELECT 1 AS one')).rows, [{ one: 1 }], 'the pool outlives the app')
})

/** A loopback port with nothing listening on it. */
function closedPort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0))
    })
  })
}

t.test('an unreachable database: 503 CONNECTION_FAILED, no timeout counted', async (t) => {
  const port = await closedPort()
  t.ok(port > 0)
  const app = Fastify()
  t.teardown(() => app.close())
  // Registered while the database is down, which the startup check would refuse.
  await app.register(dbSession, { connectionString: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`, acquireTimeoutMillis: 2000, startupCheck: false })
  addRoutes(app)
  app.get('/no-db', async () => ({ ok: true }))

  const started = Date.now()
  const res = await app.inject({ method: 'GET', url: '/query' })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_DB_SESSION_CONNECTION_FAILED')
  t.match(res.json().message, /ECONNREFUSED|connect/, 'the message carries the cause')
  t.ok(Date.now() - started < 1500, 'a refused connection fails at once, not at the deadline')
  const stats = app.db.stats()
  t.equal(stats.acquires, 0)
  t.equal(stats.acquireTimeouts, 0, 'a refused connection is not an exhausted pool')
  t.equal(stats.total, 0)
  t.equal(stats.active, 0)

  const plain = await app.inject({ method: 'GET', url: '/no-db' })
  t.equal(plain.statusCode, 200, 'routes that never touch request.db are unaffected')
})

t.test('callers that timed out leave the pool\'s queue: it holds only those still waiting', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1, acquireTimeoutMillis: 100 })
  const { holding, release } = addRoutes(app)
  const a = app.inject({ method: 'GET', url: '/hold' })
  await holding.promise
  const timedOut = await Promise.all(Array.from({ length: 20 }, () => app.inject('/query')))
  t.same(new Set(timedOut.map((res) => res.statusCode)), new Set([503]))
  t.equal(app.db.stats().waiting, 0, 'no dead waiter is left in pg-pool\'s queue')
  t.equal(app.db.stats().acquireTimeouts, 20)
  release.resolve()
  t.equal((await a).statusCode, 200)
  t.same((await app.inject('/query')).json(), { one: 1 }, 'the next caller is served at once')
})

t.test('a connection that arrives after the deadline is kept for the next caller', async (t) => {
  const db = await testDatabase(t)
  // Connects reach PostgreSQL 300 ms late: a slow network, or a database busy accepting.
  const target = new URL(db.url)
  const sockets = new Set<Socket>()
  const slow = createServer((socket) => {
    sockets.add(socket)
    socket.pause()
    setTimeout(() => {
      const upstream = connect(Number(target.port), target.hostname, () => {
        socket.pipe(upstream).pipe(socket)
        socket.resume()
      })
      sockets.add(upstream)
      upstream.on('error', () => {})
    }, 300)
  })
  await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => { for (const socket of sockets) socket.destroy(); slow.close(resolve) }))
  const url = new URL(db.url)
  url.port = String((slow.address() as { port: number }).port)
  const pool = new pg.Pool({ connectionString: url.toString(), max: 1 })
  t.teardown(() => pool.end())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { pool, acquireTimeoutMillis: 100, startupCheck: false })
  app.get('/query', async (request) => (await sql<{ one: number }>`SELECT 1 AS one`.execute(request.db)).rows[0])
  t.equal((await app.inject('/query')).json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
  await eventually(async () => pool.idleCount, (idle) => idle === 1)
  t.equal(pool.totalCount, 1, 'the late connection went back to the pool')
  t.same((await app.inject('/query')).json(), { one: 1 }, 'and serves the next caller')
})

t.test('a pool of your own without pg-pool\'s internals: the deadline holds all the same', async (t) => {
  const never = {
    options: {},
    totalCount: 0,
    idleCount: 0,
    waitingCount: 0,
    on () { return never },
    removeListener () { return never },
    connect () {},
    end: async () => {}
  }
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { pool: never as never, acquireTimeoutMillis: 50, startupCheck: false })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  // The deadline's timer does not keep a process alive (nor did pg-pool's); this pool holds no socket that would.
  const alive = setInterval(() => {}, 1000)
  const res = await app.inject('/')
  clearInterval(alive)
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
})

t.test('by default a query waits 5000 ms for a connection, then gets 503 ACQUIRE_TIMEOUT (never pg\'s forever)', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1 })
  const { holding, release } = addRoutes(app)
  const held = app.inject('/hold')
  await holding.promise
  const started = performance.now()
  const waited = await app.inject('/query')
  const elapsed = performance.now() - started
  release.resolve()
  t.equal((await held).statusCode, 200)
  t.equal(waited.statusCode, 503)
  t.equal(waited.json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
  t.match(waited.json().message, /within 5000 ms/)
  t.equal(waited.headers['retry-after'], '5')
  t.ok(elapsed >= 4990 && elapsed < 6500, `answered after the default 5000 ms (${Math.round(elapsed)} ms)`)
  t.equal(app.db.stats().acquireTimeouts, 1)
})
