// request.db is its session's Kysely executor: the first query follows BEGIN in one round trip,
// and what the short path leaves to Kysely's own executor (plugins added on the transaction,
// AbortSignal, a raw executor) still runs inside the request's transaction.
import t from 'tap'
import { CamelCasePlugin, sql } from 'kysely'
import type { Kysely, KyselyPlugin } from 'kysely'
import { testDatabase } from './helpers/database.js'
import { itemNames } from './helpers/util.js'

interface Database { items: { name: string }, people: { first_name: string } }
const typed = (db: unknown) => db as Kysely<Database>
const backendPid = async (db: Kysely<Database>) => (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(db)).rows[0].pid
const inTransaction = async (db: Kysely<Database>) => (await sql<{ xid: string | null }>`SELECT pg_current_xact_id_if_assigned()::text AS xid`.execute(db)).rows[0].xid

t.test('plugins added on request.db run their queries inside the request\'s transaction', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text); CREATE TABLE people (first_name text)')
  const app = await db.app()
  app.post('/', async (request) => {
    const trx = typed(request.db)
    const camel = trx.withPlugin(new CamelCasePlugin())
    await camel.insertInto('people').values({ firstName: 'Ada' } as never).execute()
    const seen = await camel.selectFrom('people').select('firstName' as never).executeTakeFirst()
    // Each of Kysely's ways to change plugins keeps the connection and the transaction.
    const pids = new Set([
      await backendPid(trx),
      await backendPid(camel),
      await backendPid(camel.withoutPlugins()),
      await backendPid(trx.withSchema('public')),
      await backendPid(trx.withPlugin(new CamelCasePlugin()).withPlugin(new CamelCasePlugin()))
    ])
    const executor = trx.getExecutor()
    t.same(executor.plugins, [], 'no plugins registered with the plugin')
    t.same(await trx.withoutPlugins().selectFrom('people').select('first_name').executeTakeFirst(), { first_name: 'Ada' })
    t.equal(executor.withPlugins([new CamelCasePlugin()]).plugins.length, 1, 'withPlugins adds to the session\'s plugins')
    t.equal(executor.withPluginAtFront(new CamelCasePlugin()).plugins.length, 1)
    t.equal(executor.adapter.supportsReturning, true, 'the dialect\'s adapter')
    await trx.insertInto('items').values({ name: 'apple' }).execute()
    if (request.headers['x-fail'] === '1') throw new Error('the handler fails')
    return { seen, pids: pids.size }
  })
  const ok = await app.inject({ method: 'POST', url: '/' })
  t.same(ok.json(), { seen: { firstName: 'Ada' }, pids: 1 }, 'one connection for every view of the transaction')
  const failed = await app.inject({ method: 'POST', url: '/', headers: { 'x-fail': '1' } })
  t.equal(failed.statusCode, 500)
  t.same(await itemNames(db), ['apple'], 'only the first request\'s row: the plugin\'s insert was rolled back with the rest')
  t.equal((await db.query('SELECT count(*)::int AS n FROM people')).rows[0].n, 1)
  t.equal(app.db.stats().active, 0)
})

t.test('a query with an AbortSignal goes through Kysely\'s executor, inside the transaction', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text)')
  const app = await db.app()
  app.post('/', async (request, reply) => {
    const trx = typed(request.db)
    // First query with a signal: the transaction opens on a round trip of its own.
    await trx.insertInto('items').values({ name: 'apple' }).execute({ signal: new AbortController().signal })
    const xid = await inTransaction(trx)
    const aborted = new AbortController()
    aborted.abort()
    const refused = await trx.selectFrom('items').selectAll().execute({ signal: aborted.signal }).then(() => 'ran', (error: Error) => error.name)
    // Its errors are reported as on the short path.
    const failed = await sql`SELECT 1 / 0`.execute(trx, { signal: new AbortController().signal }).then(() => null, (error: { code: string, stack: string }) => ({ code: error.code, stack: error.stack.includes('query-paths.test.ts') }))
    return reply.code(422).send({ xid: xid !== null, refused, failed })
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.same(res.json(), { xid: true, refused: 'AbortError', failed: { code: '22012', stack: true } }, 'the error\'s stack leads to the handler')
  t.same(await itemNames(db), [], 'rolled back with the 422')
  t.equal(app.db.stats().active, 0)
})

t.test('another connection provider gives an executor outside the transaction', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text)')
  const app = await db.app({ maxConnections: 2 })
  app.post('/', async (request) => {
    const trx = typed(request.db)
    await trx.insertInto('items').values({ name: 'inside' }).execute()
    const outside = trx.getExecutor().withConnectionProvider(app.db.kysely.getExecutor())
    const { rows } = await outside.executeQuery(sql`SELECT count(*)::int AS n FROM items`.compile(app.db.kysely))
    return { seenOutside: (rows[0] as { n: number }).n }
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { seenOutside: 0 }, 'the uncommitted row is not seen from outside')
})

t.test('a first query of several statements opens the transaction on its own round trip', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text)')
  const app = await db.app()
  app.post('/', async (request) => {
    const trx = typed(request.db)
    // No parameters and a semicolon: the extended protocol would refuse it after BEGIN.
    const several = await sql.raw("INSERT INTO items (name) VALUES ('apple'); INSERT INTO items (name) VALUES ('pear')").execute(trx)
    const xid = await inTransaction(trx)
    if (request.headers['x-fail'] === '1') throw new Error('the handler fails')
    return { rows: several.rows, xid: xid !== null }
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { rows: [], xid: true }, 'both ran inside one transaction')
  t.same(await itemNames(db), ['apple', 'pear'])
  t.equal((await app.inject({ method: 'POST', url: '/', headers: { 'x-fail': '1' } })).statusCode, 500)
  t.same(await itemNames(db), ['apple', 'pear'], 'the failed request\'s two rows were rolled back')
})

t.test('a first query that fails inside the batch leaves the transaction open, and it rolls back', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text UNIQUE)')
  await db.query("INSERT INTO items VALUES ('apple')")
  const app = await db.app()
  app.post('/', async (request, reply) => {
    const trx = typed(request.db)
    const error = await trx.insertInto('items').values({ name: 'apple' }).execute().then(() => null, (e: { code: string }) => e.code)
    // The batch's BEGIN ran: the transaction is open, and aborted by the failed insert.
    const next = await trx.selectFrom('items').selectAll().execute().then(() => null, (e: { code: string }) => e.code)
    return reply.code(422).send({ error, next })
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { error: '23505', next: '25P02' })
  const stats = app.db.stats()
  t.equal(stats.rollbacks, 1)
  t.equal(stats.destroyed, 0, 'a query error is not a broken connection')
  t.equal(await db.idleInTransaction(), 0)
})

t.test('through Kysely\'s executor too: concurrent queries take turns, and a query after the finish is refused', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text)')
  const app = await db.app()
  let kept: Kysely<Database> | null = null
  app.post('/', async (request) => {
    const camel = typed(request.db).withPlugin(new CamelCasePlugin())
    kept = camel
    // Both go through Kysely's executor on the session: the second waits for the first.
    const [a, b] = await Promise.all([backendPid(camel), backendPid(camel)])
    await camel.insertInto('items').values({ name: 'apple' }).execute()
    return { same: a === b }
  })
  t.same((await app.inject({ method: 'POST', url: '/' })).json(), { same: true })
  const late = await (kept as unknown as Kysely<Database>).selectFrom('items').selectAll().execute().then(() => null, (error: { code: string }) => error.code)
  t.equal(late, 'FST_DB_SESSION_TRANSACTION_FINISHED', 'never run outside the transaction')
  t.same(await itemNames(db), ['apple'])
})

t.test('a plugin\'s transformResult runs after the connection is free: it may query the transaction', async (t) => {
  const db = await testDatabase(t)
  let current: Kysely<Database> | null = null
  let inside = false
  // A plugin that looks something up in the same transaction for every result.
  const lookup: KyselyPlugin = {
    transformQuery: ({ node }) => node,
    async transformResult ({ result }) {
      if (inside || current === null) return result
      inside = true
      const { rows } = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(current)
      inside = false
      return { ...result, rows: result.rows.map((row) => ({ ...row, pid: rows[0].pid })) }
    }
  }
  const app = await db.app({ plugins: [lookup] })
  app.get('/', async (request) => {
    current = typed(request.db)
    const row = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid, 1 AS one`.execute(current)
    return row.rows[0]
  })
  const res = await app.inject('/')
  t.equal(res.statusCode, 200)
  t.equal(res.json().one, 1)
  t.equal(typeof res.json().pid, 'number', 'the plugin\'s own query ran')
})
