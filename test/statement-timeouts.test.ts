// Transaction-level safety nets: statement_timeout and idle_in_transaction_session_timeout,
// set with SET LOCAL for the plugin, per route and per fastify.db.transaction().
import t from 'tap'
import Fastify from 'fastify'
import { sql } from 'kysely'
import dbSession from '../lib/index.js'
import { testDatabase } from './helpers/database.js'
import { itemNames } from './helpers/util.js'

t.test('statementTimeoutMillis: a slow query is canceled, 503 FST_DB_SESSION_STATEMENT_TIMEOUT, rolled back, connection kept', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app({ statementTimeoutMillis: 100, maxConnections: 1 })
  app.post('/slow', async (request) => {
    await request.db.insertInto('items').values({ name: 'slow' }).execute()
    await sql`SELECT pg_sleep(2)`.execute(request.db)
    return { ok: true }
  })
  app.get('/setting', async (request) => (await sql<{ statement_timeout: string }>`SHOW statement_timeout`.execute(request.db)).rows[0])
  app.get('/lenient', { config: { db: { statementTimeoutMillis: 0 } } }, async (request) => {
    await sql`SELECT pg_sleep(0.3)`.execute(request.db)
    return (await sql<{ statement_timeout: string }>`SHOW statement_timeout`.execute(request.db)).rows[0]
  })

  const started = Date.now()
  const res = await app.inject({ method: 'POST', url: '/slow' })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_DB_SESSION_STATEMENT_TIMEOUT')
  t.ok(Date.now() - started < 1500, 'canceled at the timeout, not after the 2 s sleep')
  t.same(await itemNames(db), [], 'the insert before it was rolled back')
  const stats = app.db.stats()
  t.equal(stats.rollbacks, 1)
  t.equal(stats.destroyed, 0, 'a canceled statement leaves a healthy connection')
  t.equal(stats.active, 0)

  t.same((await app.inject('/setting')).json(), { statement_timeout: '100ms' }, 'the plugin default applies inside the transaction')
  t.same((await app.inject('/lenient')).json(), { statement_timeout: '0' }, 'a route turns it off for itself')
  const { rows } = await db.query('SHOW statement_timeout')
  t.equal(rows[0].statement_timeout, '0', 'the server default is untouched')
  t.equal(app.db.stats().connectionsCreated, 1, 'all of it on the one pooled connection')
})

t.test('SET LOCAL does not survive into the next request on the same connection', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1 })
  app.get('/strict', { config: { db: { statementTimeoutMillis: 50, idleInTransactionTimeoutMillis: 5000 } } }, async (request) =>
    (await sql<{ s: string, i: string }>`SELECT current_setting('statement_timeout') AS s, current_setting('idle_in_transaction_session_timeout') AS i`.execute(request.db)).rows[0])
  app.get('/plain', async (request) =>
    (await sql<{ s: string, i: string }>`SELECT current_setting('statement_timeout') AS s, current_setting('idle_in_transaction_session_timeout') AS i`.execute(request.db)).rows[0])
  t.same((await app.inject('/strict')).json(), { s: '50ms', i: '5s' })
  t.same((await app.inject('/plain')).json(), { s: '0', i: '0' }, 'the next request sees the server defaults')
  t.equal(app.db.stats().acquires, 2)
  t.equal(app.db.stats().connectionsCreated, 1, 'on the same connection')
})

t.test('idleInTransactionTimeoutMillis: a transaction left idle is ended by PostgreSQL; the request fails and commits nothing', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app({ idleInTransactionTimeoutMillis: 100 }, { logger: { level: 'silent' } })
  app.post('/dawdle', async (request) => {
    await request.db.insertInto('items').values({ name: 'dawdle' }).execute()
    await new Promise((resolve) => setTimeout(resolve, 600))
    return { ok: true }
  })
  app.post('/items', async (request) => {
    await request.db.insertInto('items').values({ name: 'quick' }).execute()
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/dawdle' })
  t.equal(res.statusCode, 500, 'not a 200 for lost work')
  t.equal(res.json().code, 'FST_DB_SESSION_COMMIT_FAILED')
  t.same(await itemNames(db), [], 'nothing was committed')
  t.equal(app.db.stats().destroyed, 1, 'the ended connection was destroyed')
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 200, 'the next request is served')
  t.same(await itemNames(db), ['quick'])
})

t.test('fastify.db.transaction takes the same timeouts', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ statementTimeoutMillis: 5000 })
  const seen = await app.db.transaction(async (trx) => (await sql<{ s: string }>`SELECT current_setting('statement_timeout') AS s`.execute(trx)).rows[0].s, { statementTimeoutMillis: 20 })
  t.equal(seen, '20ms', 'the call\'s own setting wins over the plugin default')
  await t.rejects(app.db.transaction((trx) => sql`SELECT pg_sleep(1)`.execute(trx), { statementTimeoutMillis: 20 }), { code: 'FST_DB_SESSION_STATEMENT_TIMEOUT' })
  await t.rejects(app.db.transaction(async () => {}, { statementTimeoutMillis: -1 }), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /fastify\.db\.transaction: statementTimeoutMillis must be an integer number of milliseconds from 0 \(no limit\) to 2147483647; instead got '-1'/
  })
})

t.test('a query canceled by someone else keeps PostgreSQL\'s own error', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  app.get('/', async (request) => {
    await sql`SELECT pg_sleep(5)`.execute(request.db)
    return { ok: true }
  })
  const response = app.inject('/')
  let canceled = false
  while (!canceled) {
    // Only once the sleep runs: PostgreSQL ignores a cancel that arrives while the backend reads
    // the rest of a batch (the query's Bind and Execute behind its Parse).
    const { rows } = await db.query("SELECT pg_cancel_backend(pid) AS c FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()", [db.name])
    canceled = rows.some((row) => row.c === true)
  }
  const res = await response
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, '57014', 'a cancel is not a statement timeout')
})

t.test('bad timeout values are refused at register time and at route declaration', async (t) => {
  for (const [options, message] of [
    [{ statementTimeoutMillis: -1 }, /^fastify-db-session: statementTimeoutMillis must be an integer number of milliseconds/],
    [{ idleInTransactionTimeoutMillis: 2 ** 31 }, /idleInTransactionTimeoutMillis must be an integer number of milliseconds from 0/],
    [{ statementTimeoutMillis: '5s' }, /instead got '5s'/]
  ] as Array<[object, RegExp]>) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(dbSession, { connectionString: 'postgres://127.0.0.1:1/none', ...options }).ready() }, { code: 'FST_DB_SESSION_INVALID_OPTION', message })
  }
  const db = await testDatabase(t)
  const app = await db.app()
  t.throws(() => app.get('/x', { config: { db: { statementTimeoutMillis: 1.5 } } }, async () => ({})), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /route \/x: config\.db\.statementTimeoutMillis must be an integer/
  })
})
