import t from 'tap'
import type { Test } from 'tap'
import Fastify from 'fastify'
import pg from 'pg'
import { CamelCasePlugin, sql } from 'kysely'
import dbSession from '../lib/index.js'
import { testDatabase } from './helpers/database.js'
import { registrationError } from './helpers/registration-error.js'
import type { TestDatabase } from './helpers/database.js'
import { deferred } from './helpers/util.js'

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
    [{ pool: { connectionTimeoutMillis: 10 }, acquireTimeoutMillis: 10 }, /acquireTimeoutMillis and pool.connectionTimeoutMillis are both set/],
    [{ connectionString: url, connectTimeoutMillis: 2 ** 31 }, /connectTimeoutMillis must be at most 2147483647 \(the longest a Node timer waits\); instead got '2147483648'/],
    [{ connectionString: url, acquireTimeoutMillis: 3e9 }, /acquireTimeoutMillis must be at most 2147483647/],
    [{ connectionString: url, maxLifetimeSeconds: 2147484 }, /maxLifetimeSeconds must be at most 2147483 \(the longest a Node timer waits\)/],
    [{ connectionString: url, connectTimeoutMillis: 0 }, /connectTimeoutMillis must be an integer of at least 1; instead got '0'/],
    [{ connectionString: url, connectTimeoutMillis: '5000' }, /connectTimeoutMillis must be an integer of at least 1; instead got '5000'/],
    [{ pool: userPool, connectTimeoutMillis: 500 }, /connectTimeoutMillis cannot apply to an existing pg.Pool; set them on the pool/],
    [{ pool: { connectionTimeoutMillis: 10 }, connectTimeoutMillis: 10 }, /connectTimeoutMillis and pool.connectionTimeoutMillis are both set \(pg-pool's connectionTimeoutMillis bounds the wait and the connect alike\); set only one/]
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

t.test('streaming through request.db without the cursor option fails with a coded error instead of running outside the transaction', async (t) => {
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

/**
 * Registers with a pg.PoolConfig for a database of the test's own plus each case's fields, and
 * checks that registration fails with the case's message before creating a client or reaching the database.
 */
async function refusesPoolConfig (t: Test, cases: Array<[Record<string, unknown>, RegExp]>, db?: TestDatabase) {
  db ??= await testDatabase(t)
  const url = new URL(db.url)
  let clients = 0
  class CountingClient extends pg.Client {
    constructor (config?: pg.ClientConfig) {
      clients++
      super(config)
    }
  }
  const base = {
    host: url.hostname,
    port: Number(url.port),
    database: url.pathname.slice(1),
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
    Client: CountingClient
  }
  for (const [fields, message] of cases) {
    const error = await registrationError({ pool: { ...base, ...fields }, startupCheck: { retries: 0 } })
    t.equal(error.code, 'FST_DB_SESSION_INVALID_OPTION', `${JSON.stringify(fields)}: ${error.message}`)
    t.match(error.message, message)
  }
  t.equal(clients, 0, 'no client was created')
  t.equal(await db.connections(), 0, 'no connection reached the database')
}

t.test('a PoolConfig\'s sizing fields are checked before any connection', async (t) => {
  await refusesPoolConfig(t, [
    [{ max: 0 }, /pool\.max must be an integer from 1 to 9007199254740991; instead got 0/],
    [{ max: -3 }, /pool\.max must be an integer from 1 .*; instead got -3/],
    [{ max: 2.5 }, /pool\.max must be an integer .*; instead got 2\.5/],
    [{ max: '10' }, /pool\.max must be an integer .*; instead got the string '10'/],
    [{ min: -1 }, /pool\.min must be an integer from 0 .*; instead got -1/],
    [{ min: 5, max: 2 }, /pool\.min must be at most the pool's max \(2\); instead got 5/],
    [{ min: 11 }, /pool\.min must be at most the pool's max \(10\); instead got 11/],
    [{ maxUses: 0 }, /pool\.maxUses must be an integer from 1 to 9007199254740991 or Infinity \(Infinity: no limit\); instead got 0/]
  ])
})

t.test('a PoolConfig\'s pool timers are checked before any connection', async (t) => {
  await refusesPoolConfig(t, [
    [{ idleTimeoutMillis: -1 }, /pool\.idleTimeoutMillis must be an integer from 0 to 2147483647 or null \(0: idle connections stay open\); instead got -1/],
    [{ idleTimeoutMillis: 2 ** 31 }, /pool\.idleTimeoutMillis must be .*; instead got 2147483648/],
    [{ connectionTimeoutMillis: -5 }, /pool\.connectionTimeoutMillis must be an integer from 0 to 2147483647 \(0: no limit\); instead got -5/],
    [{ maxLifetimeSeconds: -1 }, /pool\.maxLifetimeSeconds must be an integer from 0 to 2147483 \(0: no limit\); instead got -1/],
    [{ keepAliveInitialDelayMillis: 'soon' }, /pool\.keepAliveInitialDelayMillis must be an integer .*; instead got the string 'soon'/]
  ])
})

t.test('a PoolConfig\'s server timeouts are checked before any connection', async (t) => {
  await refusesPoolConfig(t, [
    [{ statement_timeout: -1 }, /pool\.statement_timeout must be an integer from 0 to 2147483647 or false \(0 or false: no limit\); instead got -1/],
    [{ statement_timeout: true }, /pool\.statement_timeout must be .*; instead got true \(boolean\)/],
    [{ query_timeout: -100 }, /pool\.query_timeout must be .*; instead got -100/],
    [{ lock_timeout: 1.5 }, /pool\.lock_timeout must be .*; instead got 1\.5/],
    [{ idle_in_transaction_session_timeout: null }, /pool\.idle_in_transaction_session_timeout must be .*; instead got null/]
  ])
})

t.test('a PoolConfig\'s port is checked before any connection', async (t) => {
  const db = await testDatabase(t)
  const port = new URL(db.url).port
  await refusesPoolConfig(t, [
    [{ port }, new RegExp(`pool\\.port must be an integer from 1 to 65535; instead got the string '${port}'`)],
    [{ port: 0 }, /pool\.port must be an integer from 1 to 65535; instead got 0/],
    [{ port: 70000 }, /pool\.port must be .*; instead got 70000/]
  ], db)
})

t.test('a PoolConfig with every checked field at a sensible value registers and serves requests', async (t) => {
  const db = await testDatabase(t)
  const url = new URL(db.url)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, {
    pool: {
      connectionString: db.url,
      port: Number(url.port),
      max: 2,
      min: 0,
      maxUses: Infinity,
      idleTimeoutMillis: 0,
      connectionTimeoutMillis: 0,
      maxLifetimeSeconds: 60,
      keepAliveInitialDelayMillis: 0,
      statement_timeout: false,
      query_timeout: 0,
      lock_timeout: 1000,
      idle_in_transaction_session_timeout: 60000
    }
  })
  app.get('/', async (request) => (await sql<{ lock_timeout: string }>`SHOW lock_timeout`.execute(request.db)).rows[0])
  t.same((await app.inject('/')).json(), { lock_timeout: '1s' })
})
