// fastify.close(): stuck transactions are ended within closeTimeoutMillis, owned pools are
// ended, users' pools are not, and no new database work starts afterwards.
import t from 'tap'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import pg from 'pg'
import { sql } from 'kysely'
import dbSession from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'
import { deferred } from './helpers/util.js'
import type { TestDatabase } from './helpers/database.js'

const CLOSE_TIMEOUT = 300
/** Room for the ROLLBACK, the pool's end and a loaded CI machine. */
const MARGIN = 700

async function itemNames (db: TestDatabase): Promise<string[]> {
  const { rows } = await db.query('SELECT name FROM items ORDER BY id')
  return rows.map((row) => row.name)
}

async function timed (work: Promise<unknown>): Promise<number> {
  const started = Date.now()
  await work
  return Date.now() - started
}

/** The backend of this database running `pg_sleep`, once it is. */
async function sleepingBackends (db: TestDatabase): Promise<number> {
  const { rows } = await db.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
    [db.name]
  )
  return rows[0].n
}

t.test('close() during a request stuck inside its transaction: the transaction rolls back and every connection closes', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app({ closeTimeoutMillis: CLOSE_TIMEOUT })
  const inserted = deferred()
  app.post('/stuck', async (request) => {
    await request.db.insertInto('items').values({ name: 'stuck' }).execute()
    inserted.resolve()
    await new Promise(() => {}) // never resolves
  })

  app.inject({ method: 'POST', url: '/stuck' }) // never answered: its handler never returns
  await inserted.promise
  t.equal(await db.idleInTransaction(), 1, 'the request holds an open transaction')

  const elapsed = await timed(app.close())
  t.ok(elapsed < CLOSE_TIMEOUT + MARGIN, `close() resolved in ${elapsed} ms`)
  t.same(await itemNames(db), [], 'the stuck request\'s row is absent')
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0, 'no connection is left')
  const stats = app.db.stats()
  t.equal(stats.commits, 0)
  t.equal(stats.rollbacks, 1, 'its transaction was rolled back')
  t.equal(stats.active, 0)
  t.equal(stats.total, 0)
})

t.test('close() during a query that runs on: close() still returns in time and the row never lands', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app({ closeTimeoutMillis: CLOSE_TIMEOUT })
  app.post('/sleep', async (request) => {
    await request.db.insertInto('items').values({ name: 'sleeper' }).execute()
    await sql`SELECT pg_sleep(30)`.execute(request.db)
    return { ok: true }
  })

  const response = app.inject({ method: 'POST', url: '/sleep' })
  t.equal(await eventually(() => sleepingBackends(db), (n) => n === 1), 1, 'the request sleeps inside its transaction')

  const elapsed = await timed(app.close())
  t.ok(elapsed < CLOSE_TIMEOUT + MARGIN, `close() resolved in ${elapsed} ms`)
  const stats = app.db.stats()
  t.equal(stats.leaks, 1, 'the stuck transaction is counted as a leak')
  t.ok(stats.destroyed >= 1, 'its connection was destroyed')
  t.equal(stats.total, 0)
  t.equal(stats.commits, 0)
  const res = await response
  t.equal(res.statusCode, 503, 'the stuck request fails once its connection is gone')
  t.equal(res.json().code, 'FST_DB_SESSION_CLOSING', 'its query was canceled because the server closes')
  t.same(await itemNames(db), [], 'the row is absent')
  // Closing the client's socket does not stop PostgreSQL's side: unless the query is cancelled,
  // the backend sleeps on for the rest of pg_sleep(30), holding the transaction and its locks.
  t.equal(await eventually(() => sleepingBackends(db), (n) => n === 0, 1500), 0, 'the stuck query was stopped in PostgreSQL')
  t.equal(await db.connections(), 0, 'no backend is left')
})

t.test('the plugin ends the pool it created, and never a user\'s pool', async (t) => {
  const db = await testDatabase(t)
  const owned = await db.app()
  owned.get('/one', async (request) => (await sql<{ one: number }>`SELECT 1 AS one`.execute(request.db)).rows[0])
  t.equal((await owned.inject({ method: 'GET', url: '/one' })).statusCode, 200)
  t.equal(await db.connections(), 1, 'the owned pool keeps an idle connection')
  const ownedPool = owned.db.pool
  await owned.close()
  t.equal(ownedPool.ending, true, 'the owned pool was ended')
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0, 'its connection is closed')

  const pool = new pg.Pool({ connectionString: db.url, max: 2 })
  // A real owner listens: an idle client that fails must not crash the process once the plugin is gone.
  pool.on('error', () => {})
  t.teardown(async () => {
    if (!pool.ending) await pool.end()
    await eventually(() => db.connections(), (n) => n === 0, 1000)
  })
  const app = Fastify()
  await app.register(dbSession, { pool, closeTimeoutMillis: CLOSE_TIMEOUT })
  app.get('/one', async (request) => (await sql<{ one: number }>`SELECT 1 AS one`.execute(request.db)).rows[0])
  t.equal((await app.inject({ method: 'GET', url: '/one' })).statusCode, 200)
  await app.close()
  t.equal(pool.ending, false, 'the user\'s pool was not ended')
  t.equal(pool.listenerCount('error'), 1, 'the plugin removed its listener from the user\'s pool, leaving the owner\'s')
  t.equal(await db.connections(), 1, 'its idle connection is still open')
  t.same((await pool.query('SELECT 2 AS two')).rows, [{ two: 2 }], 'and it still answers')
  await pool.end()
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0)
})

/** GET over a fresh connection (no keep-alive); resolves to the status or the socket error. */
function get (port: number, path: string): Promise<number | Error> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, headers: { connection: 'close' } }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', resolve)
  })
}

t.test('close() of a listening server with a request stuck in pg_sleep: preClose destroys the connection in time', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app({ closeTimeoutMillis: CLOSE_TIMEOUT })
  app.post('/sleep', async (request) => {
    await request.db.insertInto('items').values({ name: 'sleeper' }).execute()
    await sql`SELECT pg_sleep(30)`.execute(request.db)
    return { ok: true }
  })
  app.get('/sleep', async (request) => {
    await request.db.insertInto('items').values({ name: 'sleeper' }).execute()
    await sql`SELECT pg_sleep(30)`.execute(request.db)
    return { ok: true }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo

  const response = get(port, '/sleep')
  t.equal(await eventually(() => sleepingBackends(db), (n) => n === 1), 1, 'the request sleeps inside its transaction')
  t.equal(app.db.stats().leaks, 0)

  const stats = app.db.stats
  const elapsed = await timed(app.close())
  // Without preClose, server.close() would wait for the HTTP request, which waits 30 s for pg_sleep.
  t.ok(elapsed < CLOSE_TIMEOUT + MARGIN, `close() resolved in ${elapsed} ms`)
  t.ok(elapsed >= CLOSE_TIMEOUT - 20, 'after giving the request closeTimeoutMillis to finish')
  t.equal(stats().leaks, 1, 'the stuck transaction was counted as a leak')
  t.ok(stats().destroyed >= 1, 'its connection was destroyed')

  const status = await response
  t.equal(status, 503, 'the stuck request was answered with FST_DB_SESSION_CLOSING, not left hanging')
  t.same(await itemNames(db), [], 'the row is absent')
  t.equal(stats().total, 0)
  t.equal(stats().commits, 0)
})

t.test('fastify.db.transaction() and fastify.db.kysely after close() reject with CLOSING', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app()
  await app.db.transaction(async (trx) => trx.insertInto('items').values({ name: 'before' }).execute())
  await app.close()

  await t.rejects(
    app.db.transaction(async (trx) => trx.insertInto('items').values({ name: 'after' }).execute()),
    { code: 'FST_DB_SESSION_CLOSING', statusCode: 503 }
  )
  await t.rejects(app.db.kysely.selectFrom('items').selectAll().execute(), { code: 'FST_DB_SESSION_CLOSING' })
  t.same(await itemNames(db), ['before'], 'nothing was written after close')
  t.equal(app.db.stats().acquires, 1, 'no connection was taken after close')
  t.equal(await db.connections(), 0)
})
