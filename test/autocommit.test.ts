// autocommit: true: a read-only unit of work whose queries each run as their own implicit
// transaction, the unit's settings in the same round trip. What stays as in a transaction, and
// what the README says differs, each against real PostgreSQL.
import t from 'tap'
import type { FastifyRequest } from 'fastify'
import { CamelCasePlugin, sql } from 'kysely'
import Cursor from 'pg-cursor'
import type pg from 'pg'
import { testDatabase } from './helpers/database.js'

const READ_ONLY = { accessMode: 'read only', autocommit: true } as const
const tenantOf = (request: FastifyRequest) => request.headers['x-tenant'] as string

interface Settings { tenant: string | null, readOnly: string, applicationName: string, pid: number }

function settings (request: FastifyRequest): Promise<Settings> {
  return sql<Settings>`SELECT current_setting('app.tenant_id', true) AS tenant, current_setting('transaction_read_only') AS "readOnly",
    current_setting('application_name') AS "applicationName", pg_backend_pid() AS pid`.execute(request.db).then(({ rows }) => rows[0])
}

/** The statements the plugin hands its pool's clients (BEGIN travels inside the first, COMMIT on its own). */
function recordStatements (pool: pg.Pool): string[] {
  const sent: string[] = []
  pool.on('acquire', (client) => {
    const marked = client as pg.PoolClient & { recorded?: boolean }
    if (marked.recorded === true) return
    marked.recorded = true
    const query = client.query.bind(client) as (...args: unknown[]) => unknown
    client.query = ((...args: unknown[]) => {
      sent.push(typeof args[0] === 'string' ? args[0] : (args[0] as { text: string }).text)
      return query(...args)
    }) as typeof client.query
  })
  return sent
}

t.test('every query sees the context, application_name and read only; no COMMIT is sent; the connection goes back', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1, context: { 'app.tenant_id': tenantOf }, applicationName: () => 'reader', ...READ_ONLY })
  const sent = recordStatements(app.db.pool)
  app.get('/', async (request) => [await settings(request), await settings(request)])
  const response = await app.inject({ url: '/', headers: { 'x-tenant': 'acme' } })
  t.equal(response.statusCode, 200)
  const [first, second] = response.json()
  for (const seen of [first, second]) t.same({ ...seen, pid: 0 }, { tenant: 'acme', readOnly: 'on', applicationName: 'reader', pid: 0 })
  t.equal(first.pid, second.pid, 'the unit holds one connection for its queries')
  t.equal(sent.length, 2, 'one round trip per query, none for COMMIT')
  t.notOk(sent.some((text) => /^\s*(BEGIN|COMMIT|ROLLBACK)/i.test(text)), sent.join(' | '))
  t.equal(app.db.stats().active, 0, 'the connection is back in the pool')
  t.equal(await db.idleInTransaction(), 0)
  // Nothing of the settings outlives its statement on the pooled connection.
  const { rows } = await app.db.pool.query("SELECT current_setting('app.tenant_id', true) AS tenant, current_setting('transaction_read_only') AS ro")
  t.same(rows[0], { tenant: '', ro: 'off' })
})

t.test('without a context, the default application_name alone reaches each query too, with no warning', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1, ...READ_ONLY })
  const notices: string[] = []
  app.db.pool.on('connect', (client) => { client.on('notice', (notice) => { notices.push(notice.message ?? '') }) })
  app.get('/names/:id', async (request) => [await settings(request), await settings(request)])
  const response = await app.inject('/names/7')
  t.equal(response.statusCode, 200)
  for (const seen of response.json()) t.match(seen, { readOnly: 'on', applicationName: 'GET /names/:id req-1' })
  t.same(notices, [], 'no "SET LOCAL can only be used in transaction blocks" warning')

  const unnamed = await db.app({ maxConnections: 1, applicationName: false, ...READ_ONLY })
  unnamed.get('/', async (request) => settings(request))
  t.match((await unnamed.inject('/')).json(), { readOnly: 'on', applicationName: '', tenant: null }, 'with nothing to set but read only, still read only')
})

t.test('a write is refused with PostgreSQL\'s read-only error, and nothing is written', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const app = await db.app(READ_ONLY)
  app.post('/', async (request) => {
    try {
      await sql`INSERT INTO items VALUES ('x')`.execute(request.db)
      return { written: true }
    } catch (error) {
      return { code: (error as { code?: string }).code, message: (error as Error).message }
    }
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { code: '25006', message: 'cannot execute INSERT in a read-only transaction' })
  t.equal((await db.query('SELECT count(*)::int AS n FROM items')).rows[0].n, 0)
})

t.test('finish on every path: afterCommit after success, afterRollback after a throw, the connection back each time', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1, ...READ_ONLY })
  const ran: string[] = []
  app.get('/:fail', async (request) => {
    request.afterCommit(() => { ran.push(`commit ${(request.params as { fail: string }).fail}`) })
    request.afterRollback(() => { ran.push(`rollback ${(request.params as { fail: string }).fail}`) })
    await sql`SELECT 1`.execute(request.db)
    if ((request.params as { fail: string }).fail === 'throw') throw new Error('handler failed')
    return { ok: true }
  })
  t.equal((await app.inject('/no')).statusCode, 200)
  t.equal((await app.inject('/throw')).statusCode, 500)
  t.equal((await app.inject('/no')).statusCode, 200, 'the one connection was returned both times')
  t.same(ran, ['commit no', 'rollback throw', 'commit no'])
  t.equal(app.db.stats().active, 0)
  t.equal(await db.idleInTransaction(), 0)
})

t.test('statementTimeoutMillis holds for each query', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ ...READ_ONLY, statementTimeoutMillis: 50 })
  app.get('/', async (request) => {
    await sql`SELECT pg_sleep(0)`.execute(request.db)
    await sql`SELECT pg_sleep(2)`.execute(request.db)
  })
  const response = await app.inject('/')
  t.equal(response.statusCode, 503)
  t.equal(response.json().code, 'FST_DB_SESSION_STATEMENT_TIMEOUT')
})

t.test('differs: now() is each statement\'s own; in a transaction it is the same', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  const twice = async (request: FastifyRequest) => {
    const first = await sql<{ now: string }>`SELECT now()::text AS now`.execute(request.db)
    await sql`SELECT pg_sleep(0.01)`.execute(request.db)
    const second = await sql<{ now: string }>`SELECT now()::text AS now`.execute(request.db)
    return { same: first.rows[0].now === second.rows[0].now }
  }
  app.get('/autocommit', { config: { db: READ_ONLY } }, twice)
  app.get('/transaction', { config: { db: { accessMode: 'read only' } } }, twice)
  t.same((await app.inject('/autocommit')).json(), { same: false })
  t.same((await app.inject('/transaction')).json(), { same: true })
})

t.test('differs: SET LOCAL and set_config(…, true) sent by the handler end with their statement', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  const setThenRead = async (request: FastifyRequest) => {
    await sql`SELECT set_config('app.by_function', 'kept', true)`.execute(request.db)
    await sql`SET LOCAL app.by_statement = 'kept'`.execute(request.db)
    const { rows } = await sql<{ fn: string | null, statement: string | null }>`SELECT current_setting('app.by_function', true) AS fn, current_setting('app.by_statement', true) AS statement`.execute(request.db)
    return rows[0]
  }
  app.get('/autocommit', { config: { db: READ_ONLY } }, setThenRead)
  app.get('/transaction', { config: { db: { accessMode: 'read only' } } }, setThenRead)
  const autocommit = (await app.inject('/autocommit')).json()
  t.not(autocommit.fn, 'kept')
  t.not(autocommit.statement, 'kept')
  t.same((await app.inject('/transaction')).json(), { fn: 'kept', statement: 'kept' })
})

t.test('differs: pg_advisory_xact_lock is released when its statement ends', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  const lockThenLook = async (request: FastifyRequest) => {
    await sql`SELECT pg_advisory_xact_lock(4242)`.execute(request.db)
    // Another session tries the lock while this unit of work is still running.
    const { rows } = await db.query('SELECT pg_try_advisory_xact_lock(4242) AS free')
    return { free: rows[0].free }
  }
  app.get('/autocommit', { config: { db: READ_ONLY } }, lockThenLook)
  app.get('/transaction', { config: { db: { accessMode: 'read only' } } }, lockThenLook)
  t.same((await app.inject('/autocommit')).json(), { free: true })
  t.same((await app.inject('/transaction')).json(), { free: false })
})

t.test('differs: a failed query does not fail the ones after it; in a transaction it does', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  const failThenRead = async (request: FastifyRequest) => {
    await sql`SELECT 1 / 0`.execute(request.db).catch(() => null)
    const after = await sql<{ one: number }>`SELECT 1 AS one`.execute(request.db).then(({ rows }) => rows[0].one, (error) => error.code)
    return { after }
  }
  app.get('/autocommit', { config: { db: READ_ONLY } }, failThenRead)
  app.get('/transaction', { config: { db: { accessMode: 'read only' } } }, failThenRead)
  t.same((await app.inject('/autocommit')).json(), { after: 1 })
  const transaction = await app.inject('/transaction')
  t.equal(transaction.json().code, 'FST_DB_SESSION_TRANSACTION_ABORTED', 'its COMMIT became a rollback')
})

t.test('savepoints and stream() need a transaction: FST_DB_SESSION_AUTOCOMMIT_UNSUPPORTED', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ cursor: Cursor, ...READ_ONLY })
  app.get('/savepoint', async (request) => request.savepoint(async () => 1))
  app.get('/kysely-stream', async (request) => {
    const rows = []
    for await (const row of request.db.selectNoFrom(sql<number>`1`.as('one')).stream()) rows.push(row)
    return rows
  })
  for (const url of ['/savepoint', '/kysely-stream']) {
    const response = await app.inject(url)
    t.equal(response.statusCode, 500, url)
    t.equal(response.json().code, 'FST_DB_SESSION_AUTOCOMMIT_UNSUPPORTED', url)
    t.match(response.json().message, /autocommit: true/)
  }
  t.equal(app.db.stats().active, 0)
})

t.test('Kysely\'s own executor (a plugin on the transaction) and SQL with a semicolon get the settings too', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ context: { 'app.tenant_id': tenantOf }, ...READ_ONLY })
  app.get('/plugin', async (request) => {
    const { rows } = await sql<{ tenantId: string }>`SELECT current_setting('app.tenant_id') AS tenant_id`.execute(request.db.withPlugin(new CamelCasePlugin()))
    return rows[0]
  })
  app.get('/semicolon', async (request) => {
    const single = await sql.raw<{ tenant: string }>("SELECT current_setting('app.tenant_id') AS tenant;").execute(request.db)
    const several = await sql.raw("SELECT 1; SELECT current_setting('transaction_read_only')").execute(request.db)
    const write = await sql.raw('CREATE TABLE nope (id int); SELECT 1').execute(request.db).then(() => 'written', (error) => error.code)
    return { single: single.rows, several: several.rows, write }
  })
  t.same((await app.inject({ url: '/plugin', headers: { 'x-tenant': 'acme' } })).json(), { tenantId: 'acme' })
  t.same((await app.inject({ url: '/semicolon', headers: { 'x-tenant': 'acme' } })).json(), { single: [{ tenant: 'acme' }], several: [], write: '25006' })
})

t.test('a connection lost between queries: the next query fails with FST_DB_SESSION_CONNECTION_LOST, the connection is destroyed', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1, ...READ_ONLY })
  app.get('/', async (request) => {
    const { rows } = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(request.db)
    await db.query('SELECT pg_terminate_backend($1)', [rows[0].pid])
    await new Promise((resolve) => setTimeout(resolve, 50))
    await sql`SELECT 1`.execute(request.db)
  })
  app.get('/after', async (request) => (await sql`SELECT 1 AS one`.execute(request.db)).rows[0])
  const response = await app.inject('/')
  t.equal(response.statusCode, 503)
  t.equal(response.json().code, 'FST_DB_SESSION_CONNECTION_LOST')
  t.same((await app.inject('/after')).json(), { one: 1 }, 'the pool serves a new connection')
})

t.test('fastify.db.transaction takes autocommit too', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  await app.ready()
  const seen = await app.db.transaction(async (trx) => {
    const { rows } = await sql<{ tenant: string, ro: string }>`SELECT current_setting('app.tenant_id') AS tenant, current_setting('transaction_read_only') AS ro`.execute(trx)
    return rows[0]
  }, { accessMode: 'read only', isolationLevel: 'read committed', autocommit: true, context: { 'app.tenant_id': '7' } })
  t.same(seen, { tenant: '7', ro: 'on' })
  await t.rejects(app.db.transaction(async () => null, { autocommit: true }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /autocommit: true needs accessMode: 'read only'.*instead got accessMode 'undefined'/ })
})

t.test('autocommit is refused where it would change what a unit of work does, at registration and route declaration', async (t) => {
  const db = await testDatabase(t)
  await t.rejects(db.app({ autocommit: true }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /autocommit: true needs accessMode: 'read only'/ })
  await t.rejects(db.app({ accessMode: 'read only', isolationLevel: 'repeatable read', autocommit: true }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /autocommit: true needs isolationLevel 'read committed' or unset.*instead got isolationLevel 'repeatable read'/ })
  await t.rejects(db.app({ accessMode: 'read only', autocommit: 'yes' as never }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /autocommit must be true or false; instead got 'yes'/ })
  const app = await db.app({ ...READ_ONLY })
  t.throws(() => app.post('/write', { config: { db: { accessMode: 'read write' } } }, async () => null), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /route \/write: config\.db\.autocommit: true needs accessMode: 'read only'/ })
  // A route of a read-only autocommit app may still ask for a transaction.
  app.post('/transaction', { config: { db: { accessMode: 'read write', autocommit: false } } }, async (request) => (await sql<{ ro: string }>`SELECT current_setting('transaction_read_only') AS ro`.execute(request.db)).rows[0])
  t.same((await app.inject({ method: 'POST', url: '/transaction' })).json(), { ro: 'off' })
})
