// Every unit of work names itself in pg_stat_activity.application_name while it runs, and only
// then: an operator sees which route and request hold a connection, on the backend itself.
import t from 'tap'
import { sql } from 'kysely'
import pg from 'pg'
import { testDatabase } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'
import { pgbouncerBinary, startPgBouncer } from './helpers/pgbouncer.js'
import { deferred } from './helpers/util.js'

const missing = pgbouncerBinary() === null
if (missing && process.env.CI) throw new Error('CI is set but pgbouncer is not installed: .ci/run must apt-get install -y pgbouncer')
const skipBouncer = missing ? 'pgbouncer is not installed (apt-get install -y pgbouncer); PgBouncer test not run' : false

/** What another connection sees of backend `pid`. */
async function nameOf (db: TestDatabase, pid: number): Promise<string> {
  const { rows } = await db.query('SELECT application_name FROM pg_stat_activity WHERE pid = $1', [pid])
  return rows[0].application_name
}

/** The pool's own application_name, in the connection string: what a connection shows outside a unit of work. */
function withPoolName (url: string, name = 'notes-pool'): string {
  const named = new URL(url)
  named.searchParams.set('application_name', name)
  return named.toString()
}

const backendPid = sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`

t.test('while a request holds its transaction, its backend shows the route and the request id; after, the pool\'s own name', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ connectionString: withPoolName(db.url), maxConnections: 1, applicationName: true })
  const queried = deferred<{ pid: number, id: string }>()
  const release = deferred()
  app.get('/notes/:id', async (request) => {
    const { rows } = await backendPid.execute(request.db)
    queried.resolve({ pid: rows[0].pid, id: request.id })
    await release.promise
    return { ok: true }
  })
  const response = app.inject('/notes/42')
  const { pid, id } = await queried.promise
  t.equal(await nameOf(db, pid), `GET /notes/:id ${id}`, 'the route (its pattern, not the URL) and the request id')
  release.resolve()
  t.equal((await response).statusCode, 200)
  t.equal(await nameOf(db, pid), 'notes-pool', 'the same backend shows the pool\'s name again once the transaction ended')
  const { rows } = await app.db.pool.query('SELECT current_setting(\'application_name\') AS name, pg_backend_pid() AS pid')
  t.same(rows[0], { name: 'notes-pool', pid }, 'nothing stays on the pooled connection')
})

t.test('the not-found handler is named without its URL, which may carry a secret', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ applicationName: true })
  app.setNotFoundHandler(async (request, reply) => {
    const { rows } = await sql<{ name: string }>`SELECT current_setting('application_name') AS name`.execute(request.db)
    return reply.code(404).send({ name: rows[0].name, id: request.id })
  })
  const response = await app.inject('/missing?token=s3cret')
  t.equal(response.statusCode, 404)
  t.equal(response.json().name, `GET (no route) ${response.json().id as string}`)
})

t.test('a rolled-back request leaves no name behind either', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ connectionString: withPoolName(db.url), maxConnections: 1, applicationName: true })
  let pid = 0
  app.get('/fails', async (request) => {
    pid = (await backendPid.execute(request.db)).rows[0].pid
    throw new Error('boom')
  })
  t.equal((await app.inject('/fails')).statusCode, 500)
  t.equal(await nameOf(db, pid), 'notes-pool')
})

t.test('the applicationName option names the unit of work; the name is cut to 63 printable ASCII characters', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ applicationName: (request) => `billing ${request.headers['x-name'] as string}` })
  app.get('/', async (request) => {
    return sql<{ name: string }>`SELECT current_setting('application_name') AS name`.execute(request.db).then(({ rows }) => rows[0].name)
  })
  t.equal((await app.inject({ url: '/', headers: { 'x-name': 'nightly' } })).body, 'billing nightly')
  const long = (await app.inject({ url: '/', headers: { 'x-name': 'x'.repeat(100) } })).body
  t.equal(long, `billing ${'x'.repeat(55)}`, '63 bytes, as PostgreSQL keeps')
  t.equal((await app.inject({ url: '/', headers: { 'x-name': 'caf\u00e9\ttab' } })).body, 'billing caf??tab', 'what is not printable ASCII becomes ?')
})

t.test('the context and the name travel together', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ context: { 'app.tenant_id': () => 'acme' }, applicationName: () => 'named' })
  app.get('/', async (request) => {
    const { rows } = await sql<{ tenant: string, name: string }>`SELECT current_setting('app.tenant_id') AS tenant, current_setting('application_name') AS name`.execute(request.db)
    return rows[0]
  })
  t.same((await app.inject('/')).json(), { tenant: 'acme', name: 'named' })
})

t.test('by default a unit of work is named (SET LOCAL, alone); applicationName: false leaves application_name alone', async (t) => {
  const db = await testDatabase(t)
  const currentName = sql<{ name: string }>`SELECT current_setting('application_name') AS name`
  const byDefault = await db.app({ connectionString: withPoolName(db.url) })
  byDefault.get('/notes/:id', async (request) => (await currentName.execute(request.db)).rows[0].name)
  const res = await byDefault.inject('/notes/7')
  t.equal(res.body, 'GET /notes/:id req-1', 'the route and the request id, without the option')
  t.equal(await byDefault.db.transaction(async (trx) => (await currentName.execute(trx)).rows[0].name), 'fastify.db.transaction')
  const quoted = await byDefault.db.transaction(async (trx) => (await currentName.execute(trx)).rows[0].name, { label: "it's a \\ job" })
  t.equal(quoted, "it's a \\ job", 'quotes and backslashes survive SET LOCAL')

  const off = await db.app({ connectionString: withPoolName(db.url), applicationName: false })
  off.get('/', async (request) => (await currentName.execute(request.db)).rows[0].name)
  t.equal((await off.inject('/')).body, 'notes-pool')
  const inTransaction = await off.db.transaction(async (trx) => (await currentName.execute(trx)).rows[0].name)
  t.equal(inTransaction, 'notes-pool', 'fastify.db.transaction is not named either')
  const labelled = await off.db.transaction(async (trx) => (await currentName.execute(trx)).rows[0].name, { label: 'nightly job' })
  t.equal(labelled, 'nightly job', 'an explicit label still names it')
})

t.test('fastify.db.transaction names itself: a default, its label, or nothing with label: false', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ connectionString: withPoolName(db.url), maxConnections: 1, applicationName: true })
  const name = async (options?: { label?: string | false }): Promise<string> => app.db.transaction(async (trx) => {
    const { rows } = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(trx)
    return nameOf(db, rows[0].pid)
  }, options)
  t.equal(await name(), 'fastify.db.transaction')
  t.equal(await name({ label: 'nightly cleanup' }), 'nightly cleanup')
  t.equal(await name({ label: 'y'.repeat(80) }), 'y'.repeat(63))
  t.equal(await name({ label: false }), 'notes-pool')
  await t.rejects(app.db.transaction(async () => 1, { label: 5 as unknown as string }), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /label must be a string, or false/
  })
})

t.test('a bad applicationName option fails at register time; a function that returns no string fails the request', async (t) => {
  const db = await testDatabase(t)
  await t.rejects(db.app({ applicationName: 'notes' as never }), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /applicationName must be a function \(request\) => string, true \(the default: the route and the request id\), or false to leave application_name alone; instead got 'notes'/
  })
  const app = await db.app({ applicationName: (() => 42) as never })
  app.get('/', async (request) => sql`SELECT 1`.execute(request.db).then(() => 'ran'))
  const response = await app.inject('/')
  t.equal(response.statusCode, 500)
  t.match(response.json(), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /applicationName must return a string; it returned '42'/ })
  t.equal(await db.idleInTransaction(), 0)
})

t.test('through PgBouncer in transaction mode: the server connection shows the name while the transaction runs, and not after', { skip: skipBouncer }, async (t) => {
  const db = await testDatabase(t)
  const bouncer = await startPgBouncer(t, db.url, 1)
  const app = await db.app({ connectionString: bouncer.urlFor(db.url), maxConnections: 2, applicationName: true })
  const queried = deferred<number>()
  const release = deferred()
  app.get('/held', async (request) => {
    queried.resolve((await backendPid.execute(request.db)).rows[0].pid)
    await release.promise
    return 'done'
  })
  const response = app.inject('/held')
  const pid = await queried.promise
  t.match(await nameOf(db, pid), /^GET \/held req-/)
  release.resolve()
  t.equal((await response).body, 'done')
  // Another client of PgBouncer, on the one server connection the pool has.
  const other = new pg.Client({ connectionString: bouncer.urlFor(db.url) })
  await other.connect()
  t.teardown(() => other.end())
  const { rows } = await other.query('SELECT current_setting(\'application_name\') AS name, pg_backend_pid() AS pid')
  t.equal(rows[0].pid, pid, 'the same server connection')
  t.notMatch(rows[0].name, /held/, 'the next client does not inherit the route\'s name')
})
