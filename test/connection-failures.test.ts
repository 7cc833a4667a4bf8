// Connections that fail between the pool and the first query.
import t from 'tap'
import { createServer } from 'node:net'
import type { Socket } from 'node:net'
import Fastify from 'fastify'
import pg from 'pg'
import { sql } from 'kysely'
import dbSession from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'
import { startSilentServer } from './helpers/silent-server.js'
import { capturedLogs } from './helpers/util.js'

/** A real pg client class whose backend is terminated just before the first query `dies` picks, as after a failover. */
function dyingClient (dies: (query: unknown) => boolean): { Client: typeof pg.Client, readonly killed: number } {
  let killed = 0
  class DyingClient extends pg.Client {
    query (...args: any[]): any {
      if (killed === 0 && dies(args[0])) {
        killed++
        super.query('SELECT pg_terminate_backend(pg_backend_pid())')
          .catch(() => {})
          .then(() => (super.query as (...a: any[]) => any)(...args))
        return
      }
      return (super.query as (...a: any[]) => any)(...args)
    }
  }
  return { Client: DyingClient, get killed () { return killed } }
}

for (const [how, signal] of [['with its first query', undefined], ['on a round trip of its own (a query with an AbortSignal)', new AbortController().signal]] as const) {
  t.test(`a connection that dies before BEGIN, sent ${how}, answers 503 FST_DB_SESSION_CONNECTION_FAILED and is destroyed`, async (t) => {
    const db = await testDatabase(t)
    // The first query of a request is the one that carries BEGIN.
    const dying = dyingClient((query) => typeof (query as { submit?: unknown })?.submit === 'function' || (typeof query === 'string' && query.startsWith('BEGIN')))
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(dbSession, { pool: { connectionString: db.url, Client: dying.Client } })
    app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst({ signal }))
    const failed = await app.inject('/')
    t.equal(failed.statusCode, 503)
    t.equal(failed.json().code, 'FST_DB_SESSION_CONNECTION_FAILED')
    t.equal(dying.killed, 1)
    t.equal(app.db.stats().destroyed, 1)
    t.equal(app.db.stats().active, 0)
    const next = await app.inject('/')
    t.same(next.json(), { one: 1 }, 'the next request gets a fresh connection')
  })
}

t.test('a server that accepts but never answers: 503 at the deadline, and the late failure is absorbed', async (t) => {
  const sockets = new Set<Socket>()
  const silent = createServer((socket) => { sockets.add(socket) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  const { port } = silent.address() as { port: number }
  const pool = new pg.Pool({ connectionString: `postgres://nobody@127.0.0.1:${port}/none`, max: 1 })
  pool.on('error', () => {})
  const app = Fastify()
  await app.register(dbSession, { pool, acquireTimeoutMillis: 150, startupCheck: false })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  const started = Date.now()
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
  t.ok(Date.now() - started < 1000, 'answered at the deadline, not when the server gave up')
  // The pool's connect() still pending behind our deadline now fails: nothing is left unhandled.
  for (const socket of sockets) socket.destroy()
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(pool.totalCount, 0)
  await app.close()
  await pool.end()
  await new Promise((resolve) => silent.close(resolve))
})

t.test('the owned pool and a server that never answers, with connectTimeoutMillis the deadline: the connect gives up at it, 503 CONNECTION_FAILED', async (t) => {
  const silent = await startSilentServer(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { connectionString: silent.url, maxConnections: 1, acquireTimeoutMillis: 150, connectTimeoutMillis: 150, startupCheck: false })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  const started = Date.now()
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  // The connection made for it has the deadline's length as pg's connect timeout: its failure is
  // the answer (as when pg-pool kept the deadline), not a race of two timers of the same length.
  t.equal(res.json().code, 'FST_DB_SESSION_CONNECTION_FAILED')
  t.match(res.json().message, /timeout/)
  const took = Date.now() - started
  t.ok(took >= 140 && took < 1000, `answered at the deadline (${took} ms)`)
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(app.db.pool.totalCount, 0, 'no connection attempt is left holding the slot')
  t.equal(silent.accepted, 1)
  t.equal(silent.closed, 1, 'the client hung up')
  t.equal(app.db.stats().acquireTimeouts, 0)
})

t.test('a value pg cannot serialize fails its query, but the healthy connection is kept', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  const circular: Record<string, unknown> = {}
  circular.self = circular
  app.get('/bad', async (request) => sql`SELECT ${circular}::jsonb AS v`.execute(request.db))
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  const bad = await app.inject('/bad')
  t.equal(bad.statusCode, 500)
  t.match(bad.json().message, /circular/i, 'the serialization error itself')
  t.not(bad.json().code, 'FST_DB_SESSION_CONNECTION_LOST', 'not mistaken for a lost connection')
  const stats = app.db.stats()
  t.equal(stats.destroyed, 0, 'the connection was returned, not destroyed')
  t.equal(stats.idle, 1)
  t.same((await app.inject('/')).json(), { one: 1 }, 'and serves the next request')
  t.equal(app.db.stats().connectionsCreated, 1, 'the same connection')
})

t.test('a ROLLBACK that fails on a connection thought healthy: logged, and the connection destroyed', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const dying = dyingClient((query) => query === 'ROLLBACK')
  const logs = capturedLogs()
  const app = Fastify(logs.options)
  t.teardown(() => app.close())
  await app.register(dbSession, { pool: { connectionString: db.url, Client: dying.Client } })
  app.post('/', async (request) => {
    await request.db.insertInto('items' as never).values({ name: 'x' } as never).execute()
    throw new Error('the handler fails')
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.json().message, 'the handler fails')
  t.ok(logs.lines.some((line) => line.level === 40 && line.msg.includes('ROLLBACK failed; destroying the connection')), 'the failed ROLLBACK was logged')
  const stats = app.db.stats()
  t.equal(stats.destroyed, 1)
  t.equal(stats.total, 0)
  t.equal((await db.query('SELECT count(*)::int AS n FROM items')).rows[0].n, 0, 'nothing committed')
})

t.test('a connection given back inside a transaction (fastify.db.kysely, BEGIN left open) is destroyed, not pooled', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1 })
  const pid = await app.db.kysely.connection().execute(async (conn) => {
    await sql`BEGIN`.execute(conn)
    return (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(conn)).rows[0].pid
  })
  t.equal(app.db.stats().destroyed, 1, 'PostgreSQL did not report it idle: destroyed')
  t.equal(await eventually(() => db.idleInTransaction(), (n) => n === 0), 0, 'no backend is left idle in transaction')
  const next = await app.db.kysely.connection().execute(async (conn) => (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(conn)).rows[0])
  t.not(next.pid, pid, 'the next checkout got a new connection')
})
