import t from 'tap'
import Fastify from 'fastify'
import pg from 'pg'
import { CamelCasePlugin, sql } from 'kysely'
import dbSession from '../lib/index.js'
import { testDatabase } from './helpers/database.js'
import { deferred } from './helpers/util.js'

/** Registers the plugin with `options` and returns the error registration failed with. */
async function registrationError (options: unknown): Promise<{ code?: string, message: string }> {
  const app = Fastify()
  try {
    await app.register(dbSession, options as never)
    await app.ready()
  } catch (error) {
    return error as { code?: string, message: string }
  } finally {
    await app.close()
  }
  throw new Error('registration unexpectedly succeeded')
}

t.test('bad options fail registration with a message that says what to fix', async (t) => {
  const url = 'postgres://127.0.0.1:1/none'
  const userPool = new pg.Pool({ connectionString: url })
  const userPoolWithDeadline = new pg.Pool({ connectionString: url, connectionTimeoutMillis: 100 })
  t.teardown(async () => { await userPool.end(); await userPoolWithDeadline.end() })
  const cases: Array<[unknown, RegExp]> = [
    [null, /give either connectionString or pool/],
    [{}, /give either connectionString or pool/],
    [{ connectionString: url, conectionTimeout: 5 }, /unknown option 'conectionTimeout'; known options are connectionString, pool,/],
    [{ connectionString: '' }, /connectionString must be a non-empty string; instead got ''/],
    [{ connectionString: 42 }, /connectionString must be a non-empty string; instead got '42'/],
    [{ pool: 'postgres://x' }, /pool must be a pg.Pool or a pg.PoolConfig object; instead got 'postgres:\/\/x'/],
    [{ pool: null }, /pool must be a pg.Pool or a pg.PoolConfig object; instead got 'null'/],
    [{ connectionString: url, commitWhen: true }, /commitWhen must be a function \(request, reply\) => boolean; instead got 'true'/],
    [{ connectionString: url, plugins: {} }, /plugins must be an array of Kysely plugins/],
    [{ connectionString: url, isolationLevel: 'snapshot' }, /isolationLevel must be one of read uncommitted, read committed, repeatable read, serializable; instead got 'snapshot'/],
    [{ connectionString: url, maxConnections: 0 }, /maxConnections must be an integer of at least 1; instead got '0'/],
    [{ connectionString: url, acquireTimeoutMillis: 1.5 }, /acquireTimeoutMillis must be an integer of at least 1; instead got '1.5'/],
    [{ connectionString: url, closeTimeoutMillis: -1 }, /closeTimeoutMillis must be an integer of at least 1/],
    [{ connectionString: url, idleTimeoutMillis: '10' }, /idleTimeoutMillis must be an integer of at least 0; instead got '10'/],
    [{ pool: userPool, maxConnections: 5 }, /maxConnections cannot apply to an existing pg.Pool; set them on the pool/],
    [{ pool: userPool, connectionString: url, maxLifetimeSeconds: 5 }, /connectionString, maxLifetimeSeconds cannot apply to an existing pg.Pool/],
    [{ pool: userPoolWithDeadline, acquireTimeoutMillis: 50 }, /acquireTimeoutMillis conflicts with the pool's connectionTimeoutMillis \(100\); set only one/],
    [{ pool: { max: 3 }, maxConnections: 5 }, /maxConnections and pool.max are both set; set only one/],
    [{ pool: { connectionString: url }, connectionString: url }, /connectionString and pool.connectionString are both set/],
    [{ pool: { connectionTimeoutMillis: 10 }, acquireTimeoutMillis: 10 }, /acquireTimeoutMillis and pool.connectionTimeoutMillis are both set/]
  ]
  for (const [options, message] of cases) {
    const error = await registrationError(options)
    t.equal(error.code, 'FST_DB_SESSION_INVALID_OPTION', String(message))
    t.match(error.message, message)
    t.ok(error instanceof TypeError, 'a TypeError')
  }
})

t.test('the owned pool gets documented defaults, and never waits forever', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  t.match(app.db.pool.options, { max: 10, idleTimeoutMillis: 10000, maxLifetimeSeconds: 1800 })
  // The 5000 ms acquire deadline is the plugin's (test/acquire-timeout.test.ts): pg-pool's own
  // connectionTimeoutMillis would put a timer on every checkout.
  t.notOk(app.db.pool.options.connectionTimeoutMillis)
  t.equal(app.db.stats().max, 10)
})

t.test('named options and a PoolConfig size the owned pool', async (t) => {
  const db = await testDatabase(t)
  const named = await db.app({ maxConnections: 3, acquireTimeoutMillis: 250, idleTimeoutMillis: 0, maxLifetimeSeconds: 0 })
  t.match(named.db.pool.options, { max: 3, idleTimeoutMillis: 0, maxLifetimeSeconds: 0 })
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { pool: { connectionString: db.url, max: 4, connectionTimeoutMillis: 700 } })
  t.match(app.db.pool.options, { max: 4, connectionTimeoutMillis: 700 })
  t.equal(app.db.stats().max, 4)
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  t.same((await app.inject('/')).json(), { one: 1 })
})

t.test('Kysely plugins apply to request.db, fastify.db.transaction and fastify.db.kysely', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE people (first_name text)')
  await db.query("INSERT INTO people VALUES ('Ada')")
  const app = await db.app({ plugins: [new CamelCasePlugin()] })
  app.get('/', async (request) => request.db.selectFrom('people').select('firstName').executeTakeFirst())
  t.same((await app.inject('/')).json(), { firstName: 'Ada' })
  t.same(await app.db.transaction((trx) => trx.selectFrom('people').select('firstName').executeTakeFirst()), { firstName: 'Ada' })
  t.same(await app.db.kysely.selectFrom('people').select('firstName').executeTakeFirst(), { firstName: 'Ada' })
})

t.test('streaming through request.db fails with a coded error instead of running outside the transaction', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  app.get('/', async (request) => {
    try {
      const rows = request.db.selectNoFrom((eb) => eb.val(1).as('one')).stream()
      return (await rows.next()).value
    } catch (error) {
      return { code: (error as { code: string }).code }
    }
  })
  t.same((await app.inject('/')).json(), { code: 'FST_DB_SESSION_STREAM_UNSUPPORTED' })
  t.equal(app.db.stats().active, 0)
})

t.test('a PoolConfig with the password as a field: the startup check authenticates, and close() ends a stuck transaction', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const url = new URL(db.url)
  const app = Fastify()
  const config = { host: url.hostname, port: Number(url.port), database: url.pathname.slice(1), user: decodeURIComponent(url.username), password: decodeURIComponent(url.password) }
  // The startup check connects with a client of its own, from the pool's options.
  await app.register(dbSession, { pool: config, closeTimeoutMillis: 200 })
  const stuck = deferred()
  app.post('/', async (request) => {
    await request.db.insertInto('items' as never).values({ name: 'stuck' } as never).execute()
    stuck.resolve()
    await new Promise(() => {}) // never returns: close() must end it
  })
  app.inject({ method: 'POST', url: '/' }).catch(() => {})
  await stuck.promise
  await app.close()
  // Close canceled the stuck transaction's work and destroyed its connection: nothing is left.
  t.equal(await db.connections(), 0, 'no backend is left')
  t.equal((await db.query('SELECT count(*)::int AS n FROM items')).rows[0].n, 0)
  // And an empty context for fastify.db.transaction sets nothing.
  const other = await db.app()
  t.same(await other.db.transaction(async (trx) => (await sql<{ one: number }>`SELECT 1 AS one`.execute(trx)).rows[0], { context: {} }), { one: 1 })
})
