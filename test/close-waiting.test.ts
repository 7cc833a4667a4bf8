// close() answers the callers still waiting for a connection at once, with FST_DB_SESSION_CLOSING:
// whether they wait in the pool's queue or for a connection being made, and whatever the
// connections held by others do meanwhile.
import t from 'tap'
import Fastify from 'fastify'
import pg from 'pg'
import dbSession from '../lib/index.js'
import { eventually, holderAndQueuedWaiter, testDatabase } from './helpers/database.js'
import { startProxy } from './helpers/tcp-proxy.js'

t.test('a caller queued behind a holder whose ROLLBACK never comes back gets CLOSING, not its acquire timeout', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const proxy = await startProxy(t, db.url)
  const app = await db.app({ connectionString: proxy.urlFor(db.url), maxConnections: 1, acquireTimeoutMillis: 20_000, closeTimeoutMillis: 200 })
  const { holder, waiter, release } = await holderAndQueuedWaiter(app)
  // The database stops answering: the holder's ROLLBACK at close() hangs until its connection is
  // destroyed, and the pool ends with the waiter still in its queue.
  proxy.mode = 'silent'
  await app.close()
  const waited = await waiter
  t.equal(waited.statusCode, 503)
  t.equal(waited.json().code, 'FST_DB_SESSION_CLOSING', 'answered by close(), not 20 s later by its deadline')
  release()
  t.equal((await holder).json().code, 'FST_DB_SESSION_CLOSING')
  t.same((await db.query('SELECT name FROM items')).rows, [], 'nothing committed')
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0, 'nothing is left open')
})

t.test('a caller whose connection is being made gets CLOSING; close() ends that connect with the pool', async (t) => {
  const db = await testDatabase(t)
  const proxy = await startProxy(t, db.url)
  const app = await db.app({ connectionString: proxy.urlFor(db.url), startupCheck: false, acquireTimeoutMillis: 20_000 })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  // The connect reaches the database 2 s late: close() must not wait for it (closeTimeoutMillis is 5 s).
  proxy.connectDelayMillis = 2000
  const response = app.inject('/')
  await eventually(async () => proxy.accepted, (n) => n === 1)
  const started = Date.now()
  await app.close()
  const took = Date.now() - started
  const res = await response
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_DB_SESSION_CLOSING')
  t.ok(took < 1500, `close() ended the connect instead of waiting for it (${took} ms)`)
  t.equal(app.db.pool.totalCount, 0, 'the pool ended')
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0, 'the late connection was not kept')
})

t.test('with the user\'s pool: a caller whose connection is being made gets CLOSING; that connection, made after, goes back to the pool', async (t) => {
  const db = await testDatabase(t)
  const proxy = await startProxy(t, db.url)
  proxy.connectDelayMillis = 300
  const pool = new pg.Pool({ connectionString: proxy.urlFor(db.url), max: 1 })
  t.teardown(() => pool.end())
  const app = Fastify()
  await app.register(dbSession, { pool, startupCheck: false, acquireTimeoutMillis: 20_000 })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  const response = app.inject('/')
  await eventually(async () => proxy.accepted, (n) => n === 1)
  await app.close()
  t.equal((await response).json().code, 'FST_DB_SESSION_CLOSING')
  // The user's pool is theirs to end: its connect is left to finish, and the connection to them.
  t.equal(await eventually(async () => pool.idleCount, (n) => n === 1), 1, 'made after close(), idle in the user\'s pool')
  t.equal(pool.totalCount, 1, 'nothing else is held')
  t.same((await pool.query('SELECT 1 AS one')).rows, [{ one: 1 }], 'and usable')
})

t.test('a caller whose connect fails after close() started has its answer already: CLOSING', async (t) => {
  const db = await testDatabase(t)
  const proxy = await startProxy(t, db.url, 'silent')
  const app = await db.app({ connectionString: proxy.urlFor(db.url), startupCheck: false, acquireTimeoutMillis: 300, closeTimeoutMillis: 2000 })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  const response = app.inject('/')
  await eventually(async () => proxy.accepted, (n) => n === 1)
  // close() waits for the pool to end, which waits for the connect to time out and fail.
  await app.close()
  const res = await response
  t.equal(res.json().code, 'FST_DB_SESSION_CLOSING')
  t.equal(app.db.stats().circuitOpen, false)
})
