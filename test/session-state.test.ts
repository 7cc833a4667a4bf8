// Statements whose effect would outlive the request's transaction on its pooled connection are
// refused before they run; their transaction-scoped forms run.
import t from 'tap'
import { sql } from 'kysely'
import { testDatabase } from './helpers/database.js'

const REFUSED = [
  "SET app.leaky = 'x'",
  'set search_path to public',
  "SET SESSION statement_timeout = '1s'",
  'RESET statement_timeout',
  'LISTEN jobs',
  'PREPARE two AS SELECT 2',
  'DEALLOCATE ALL',
  'DISCARD ALL',
  'SELECT pg_advisory_lock(42)',
  'SELECT pg_try_advisory_lock_shared(42)',
  "SELECT set_config('app.leaky', 'x', false)"
]

const ALLOWED = [
  "SET LOCAL app.fine = 'x'",
  'SET TRANSACTION READ ONLY',
  'SET CONSTRAINTS ALL DEFERRED',
  "SELECT set_config('app.fine', 'x', true)",
  'SELECT pg_advisory_xact_lock(42)',
  "SELECT 'SET app.leaky = 1' AS text_that_only_mentions_it"
]

t.test('session-level statements through request.db fail with FST_DB_SESSION_SESSION_STATE and never run', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1 })
  app.post<{ Body: { first: boolean, statement: string } }>('/', async (request) => {
    if (!request.body.first) await sql`SELECT 1`.execute(request.db)
    await sql.raw(request.body.statement).execute(request.db)
    return { ran: true }
  })
  for (const statement of REFUSED) {
    for (const first of [true, false]) {
      const res = await app.inject({ method: 'POST', url: '/', payload: { first, statement } })
      t.equal(res.statusCode, 500, `${statement} (${first ? 'first' : 'later'} query)`)
      t.equal(res.json().code, 'FST_DB_SESSION_SESSION_STATE')
      t.match(res.json().message, /outlives this transaction.*SET LOCAL/)
    }
  }
  // Nothing of them reached the connection: no setting, no session lock, no prepared statement.
  const after = await app.db.kysely.connection().execute(async (conn) => (await sql<{ leaky: string | null, locks: number, prepared: number }>`
    SELECT current_setting('app.leaky', true) AS leaky,
      (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks,
      (SELECT count(*)::int FROM pg_prepared_statements) AS prepared`.execute(conn)).rows[0])
  t.same(after, { leaky: null, locks: 0, prepared: 0 }, 'the pooled connection carries none of them')
  t.equal(app.db.stats().total, 1, 'the same one connection throughout')
})

t.test('their transaction-scoped forms run, and end with the transaction', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1 })
  app.post<{ Body: { statement: string } }>('/', async (request) => {
    await sql.raw(request.body.statement).execute(request.db)
    return { ran: true }
  })
  for (const statement of ALLOWED) {
    const res = await app.inject({ method: 'POST', url: '/', payload: { statement } })
    t.same([res.statusCode, res.json()], [200, { ran: true }], statement)
  }
  const locks = await db.query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory'")
  t.equal(locks.rows[0].n, 0, 'the transaction-level advisory lock ended with its transaction')
})

t.test('fastify.db.transaction refuses them too, also through Kysely\'s executor', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  await t.rejects(app.db.transaction((trx) => sql`LISTEN jobs`.execute(trx)), { code: 'FST_DB_SESSION_SESSION_STATE' })
  await t.rejects(app.db.transaction(async (trx) => {
    await sql`SELECT 1`.execute(trx)
    await sql`SELECT pg_advisory_lock(7)`.execute(trx.withoutPlugins())
  }), { code: 'FST_DB_SESSION_SESSION_STATE' })
  t.equal(app.db.stats().acquires, 1, 'a refused first query takes no connection')
  t.equal(app.db.stats().rollbacks, 1, 'the transaction that had opened rolled back')
  // fastify.db.kysely is a plain Kysely on the pool: session work is the caller's business there.
  await app.db.kysely.connection().execute(async (conn) => {
    await sql`SELECT pg_advisory_lock(7)`.execute(conn)
    await sql`SELECT pg_advisory_unlock(7)`.execute(conn)
  })
})
