// preparedStatements: queries with parameters go to PostgreSQL as named statements, parsed once
// per connection. Checked against the server's own record (pg_prepared_statements) and against
// the Parse messages pg writes: the names stay right after failures of every kind (the query's,
// the prelude's, a value pg cannot send, a table whose columns changed).
import t from 'tap'
import type { Test } from 'tap'
import Fastify from 'fastify'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { sql } from 'kysely'
import type { Kysely } from 'kysely'
import pg from 'pg'
import { BeginFailure, beginWithQuery } from '../lib/begin-with-query.js'
import dbSession from '../lib/index.js'
import { testDatabase } from './helpers/database.js'
import { registrationError } from './helpers/registration-error.js'
import { pgbouncerBinary, startPgBouncer } from './helpers/pgbouncer.js'
import type { TestDatabase } from './helpers/database.js'

// Each test makes a database and a pool; on a loaded machine the file outlasts tap's default 30 s.
t.setTimeout(120_000)

/** fastify_db_session_, this process's random part, a number. */
const NAME = /^fastify_db_session_[0-9a-f]{12}_\d+$/
const SILENT = { logger: { level: 'silent' } }
const missing = pgbouncerBinary() === null
if (missing && process.env.CI) throw new Error('CI is set but pgbouncer is not installed: .ci/run must apt-get install -y pgbouncer')
const skipBouncer = missing ? 'pgbouncer is not installed (apt-get install -y pgbouncer); PgBouncer test not run' : false

interface Prepared { name: string, statement: string, runs: number }

/** The named statements of the connection `db` runs on, by the server: a query without parameters, so never named itself. */
async function preparedOn (db: Kysely<any>): Promise<Prepared[]> {
  const { rows } = await sql<Prepared>`SELECT name, statement, (generic_plans + custom_plans)::int AS runs
    FROM pg_prepared_statements ORDER BY prepare_time, name`.execute(db)
  return rows
}

/** The names of the statements pg parses on the pool's connections, in the order written (unnamed Parses left out). */
function recordNamedParses (pool: pg.Pool): string[] {
  const parsed: string[] = []
  pool.on('connect', (client) => {
    const connection = (client as unknown as { connection: { parse: (query: { name?: string }) => void } }).connection
    const parse = connection.parse.bind(connection)
    connection.parse = (query) => {
      if (query.name !== undefined && query.name !== '') parsed.push(query.name)
      parse(query)
    }
  })
  return parsed
}

async function setup (t: Test, options = {}): Promise<{ db: TestDatabase, app: FastifyInstance, parsed: string[] }> {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)')
  await db.query("INSERT INTO items VALUES (1, 'apple'), (2, 'pear'), (3, 'plum')")
  const app = await db.app({ maxConnections: 1, ...options }, SILENT)
  return { db, app, parsed: recordNamedParses(app.db.pool) }
}

const idOf = (request: FastifyRequest) => Number((request.params as { id: string }).id)

/** Two queries with parameters (the first behind BEGIN, the second on its own), then the connection's statements. */
async function twoQueries (db: Kysely<any>, id: number) {
  const byId = db.selectFrom('items').select('name').where('id', '=', id)
  const others = sql<{ n: number }>`SELECT count(*)::int AS n FROM items WHERE id <> ${id}`
  const name = (await byId.executeTakeFirst())?.name
  const { n } = (await others.execute(db)).rows[0]
  return { name, others: n, texts: [byId.compile().sql, others.compile(db).sql], prepared: await preparedOn(db) }
}

t.test('queries with parameters run as named statements, parsed once per connection, with the right results', async (t) => {
  const { app, parsed } = await setup(t, { preparedStatements: true })
  app.get('/items/:id', async (request) => twoQueries(request.db, idOf(request)))
  const seen: Array<Awaited<ReturnType<typeof twoQueries>>> = []
  for (const [id, name] of [[1, 'apple'], [2, 'pear'], [3, 'plum'], [1, 'apple'], [9, undefined]] as const) {
    const response = await app.inject(`/items/${id}`)
    t.equal(response.statusCode, 200)
    const body = response.json()
    t.equal(body.name, name, `item ${id}`)
    t.equal(body.others, id === 9 ? 3 : 2)
    seen.push(body)
  }
  const [first] = seen
  t.equal(first.prepared.length, 2, 'both queries are named statements on the connection')
  t.same(first.prepared.map((p) => p.statement), first.texts, 'under their own texts')
  for (const p of first.prepared) t.match(p.name, NAME)
  seen.forEach((body, i) => {
    t.same(body.prepared.map((p) => p.name), first.prepared.map((p) => p.name), `request ${i + 1}: the same two statements`)
    t.same(body.prepared.map((p) => p.runs), [i + 1, i + 1], `request ${i + 1}: each statement run once more`)
  })
  t.same(parsed, first.prepared.map((p) => p.name), 'each parsed once, by the first request')
  t.equal(app.db.stats().commits, 5)
})

t.test('without the option nothing is prepared', async (t) => {
  const { db, app, parsed } = await setup(t)
  app.get('/items/:id', async (request) => twoQueries(request.db, idOf(request)))
  for (const id of [1, 1]) {
    const body = (await app.inject(`/items/${id}`)).json()
    t.match(body, { name: 'apple', others: 2 })
    t.same(body.prepared, [])
  }
  t.same(parsed, [])

  const off = await db.app({ maxConnections: 1, preparedStatements: false })
  off.get('/', async (request) => preparedOn(request.db))
  off.get('/one', async (request) => sql`SELECT ${1}::int AS one`.execute(request.db))
  await off.inject('/one')
  t.same((await off.inject('/')).json(), [], 'preparedStatements: false is the default')
})

t.test('queries without parameters are never named; max caps the texts named, the others run unnamed', async (t) => {
  const { app, parsed } = await setup(t, { preparedStatements: { max: 1 } })
  app.get('/plain', async (request) => {
    const rows = await request.db.selectFrom('items').select('name').orderBy('id').execute()
    return { names: rows.map((row) => row.name), prepared: await preparedOn(request.db) }
  })

  app.get('/byId/:id', async (request) => {
    const row = await request.db.selectFrom('items').select('name').where('id', '=', idOf(request)).executeTakeFirst()
    return { name: row?.name, prepared: await preparedOn(request.db) }
  })
  app.get('/byName/:name', async (request) => {
    const { name } = request.params as { name: string }
    const row = await request.db.selectFrom('items').select('id').where('name', '=', name).executeTakeFirst()
    return { id: row?.id, prepared: await preparedOn(request.db) }
  })
  t.same((await app.inject('/plain')).json(), { names: ['apple', 'pear', 'plum'], prepared: [] })
  const byId = (await app.inject('/byId/2')).json()
  t.equal(byId.name, 'pear')
  t.equal(byId.prepared.length, 1, 'the first text is named')
  t.match(byId.prepared[0].statement, /where "id" = \$1$/)
  for (const [name, id] of [['plum', 3], ['apple', 1]] as const) {
    const byName = (await app.inject(`/byName/${name}`)).json()
    t.equal(byName.id, id, 'a text past max runs unnamed, with the right result')
    t.same(byName.prepared.map((p: Prepared) => p.name), byId.prepared.map((p: Prepared) => p.name), 'and is not named')
  }
  t.equal((await app.inject('/byId/3')).json().name, 'plum')
  t.same(parsed, [byId.prepared[0].name])
})

t.test('a named query that fails when run leaves its statement in place: the next run skips the Parse and works', async (t) => {
  const { db, app, parsed } = await setup(t, { preparedStatements: true })
  app.get('/divide/:by', async (request) => {
    const by = Number((request.params as { by: string }).by)
    const { rows } = await sql<{ q: number }>`SELECT 6 / ${by}::int AS q`.execute(request.db)
    return { q: rows[0].q, prepared: await preparedOn(request.db) }
  })
  app.get('/later/:by', async (request) => {
    await sql`SELECT 1`.execute(request.db)
    const by = Number((request.params as { by: string }).by)
    return (await sql<{ q: number }>`SELECT 12 / ${by}::int AS q`.execute(request.db)).rows[0]
  })
  const ok = (await app.inject('/divide/2')).json()
  t.equal(ok.q, 3)
  const failed = await app.inject('/divide/0')
  t.equal(failed.statusCode, 500)
  t.equal(failed.json().code, '22012', 'division by zero, the query\'s own error')
  t.equal(app.db.stats().rollbacks, 1, 'the request rolled back')
  t.equal(await db.idleInTransaction(), 0)
  const again = (await app.inject('/divide/3')).json()
  t.equal(again.q, 2, 'no "prepared statement does not exist" nor "already exists"')
  t.same(again.prepared.map((p: Prepared) => p.name), ok.prepared.map((p: Prepared) => p.name))
  t.same(parsed, [ok.prepared[0].name], 'parsed once')

  // The same failure on a later query of the transaction (not behind BEGIN).
  t.same((await app.inject('/later/2')).json(), { q: 6 })
  t.equal((await app.inject('/later/0')).json().code, '22012')
  t.same((await app.inject('/later/4')).json(), { q: 3 })
  t.equal(parsed.length, 2, 'the later query parsed once too')
})

t.test('a named query that does not parse fails with its syntax error every time; the connection goes on working', async (t) => {
  const { app, parsed } = await setup(t, { preparedStatements: true })
  app.get('/broken', async (request) => sql`SELECT name FROM items WHERE id = ${1} ORDER`.execute(request.db))
  app.get('/broken-later', async (request) => {
    await sql`SELECT 1`.execute(request.db)
    return sql`SELECT name FROM items WHERE id = ${1} GROUP`.execute(request.db)
  })
  app.get('/items/:id', async (request) => twoQueries(request.db, idOf(request)))
  for (const url of ['/broken', '/broken', '/items/1', '/broken', '/broken-later', '/broken-later', '/items/2', '/broken']) {
    const response = await app.inject(url)
    if (url.startsWith('/items')) {
      t.equal(response.statusCode, 200, url)
      t.equal(response.json().prepared.length, 2, 'only the statements that parsed exist')
    } else {
      t.equal(response.statusCode, 500, url)
      t.equal(response.json().code, '42601', `${url}: a syntax error, not 26000 (does not exist) nor 42P05 (already exists)`)
    }
  }
  t.equal(app.db.stats().destroyed, 0, 'the connection lived through every failure')
  t.equal(parsed.filter((name) => parsed.indexOf(name) !== parsed.lastIndexOf(name)).length, 6, 'the broken texts are parsed again at each run, as nothing was prepared')
})

t.test('beginWithQuery: a prelude that fails leaves the name unparsed; the next run parses it, the one after skips the Parse', async (t) => {
  const db = await testDatabase(t)
  const client = new pg.Client({ connectionString: db.url })
  await client.connect()
  t.teardown(() => client.end())
  const parsed: string[] = []
  const connection = (client as unknown as { connection: { parse: (query: { name?: string }) => void } }).connection
  const parse = connection.parse.bind(connection)
  connection.parse = (query) => { parsed.push(query.name ?? ''); parse(query) }
  const name = 'fastify_db_session_prelude_test'
  const text = 'SELECT $1::int + 1 AS n'
  const prepared = async () => (await client.query('SELECT name, statement FROM pg_prepared_statements')).rows

  const failure = await beginWithQuery(client, ['BEGIN', 'SELECT 1/0'], text, [1], name).then(() => null, (error: Error) => error)
  t.ok(failure instanceof BeginFailure, 'the prelude\'s failure')
  t.equal((failure?.cause as { code?: string }).code, '22012')
  t.same(parsed, ['', '', name], 'the query\'s Parse went with the prelude')
  await client.query('ROLLBACK')
  t.same(await prepared(), [], 'PostgreSQL skipped it after the error')

  parsed.length = 0
  t.same((await beginWithQuery(client, ['BEGIN'], text, [1], name)).rows, [{ n: 2 }])
  await client.query('COMMIT')
  t.same(parsed, ['', name], 'parsed again, as it never ran')
  t.same(await prepared(), [{ name, statement: text }])

  parsed.length = 0
  t.same((await beginWithQuery(client, ['BEGIN'], text, [2], name)).rows, [{ n: 3 }])
  await client.query('COMMIT')
  t.same(parsed, [''], 'only BEGIN is parsed: the statement exists')

  // A prelude failure once the statement exists: it stays, and is not parsed again.
  parsed.length = 0
  const again = await beginWithQuery(client, ['BEGIN', 'SELECT 1/0'], text, [3], name).then(() => null, (error: Error) => error)
  t.ok(again instanceof BeginFailure)
  await client.query('ROLLBACK')
  t.same((await beginWithQuery(client, [], text, [4], name)).rows, [{ n: 5 }])
  t.same(parsed, ['', ''], 'never parsed again')
})

/** An object JSON.stringify refuses: pg fails while writing the Bind, after the Parse. */
function circular (): object {
  const value: Record<string, unknown> = {}
  value.self = value
  return value
}

t.test('a value pg cannot send fails its query; the same text runs again on that connection (behind BEGIN and later)', async (t) => {
  const { db, app, parsed } = await setup(t, { preparedStatements: true })
  const valueOf = (request: FastifyRequest) => (request.query as { bad?: string }).bad === undefined ? { a: 1 } : circular()
  app.get('/first', async (request) => {
    return (await sql<{ a: number }>`SELECT (${valueOf(request)}::jsonb ->> 'a')::int AS a`.execute(request.db)).rows[0]
  })
  app.get('/later', async (request) => {
    await sql`SELECT 1`.execute(request.db)
    return (await sql<{ b: number }>`SELECT (${valueOf(request)}::jsonb ->> 'a')::int + 1 AS b`.execute(request.db)).rows[0]
  })
  app.get('/fresh', async (request) => (await sql<{ c: number }>`SELECT (${valueOf(request)}::jsonb ->> 'a')::int + 2 AS c`.execute(request.db)).rows[0])
  for (const url of ['/first', '/later']) {
    const expected = url === '/first' ? { a: 1 } : { b: 2 }
    t.same((await app.inject(url)).json(), expected, `${url}: prepared on the connection`)
    const refused = await app.inject(`${url}?bad`)
    t.equal(refused.statusCode, 500)
    t.match(refused.json().message, /circular/i, `${url}: pg's own error`)
    for (const round of [1, 2]) {
      const response = await app.inject(url)
      t.equal(response.statusCode, 200, `${url}: runs again (${round}), not 26000 "prepared statement does not exist"`)
      t.same(response.json(), expected)
    }
  }
  // pg closed the statement behind the refused Bind, so the next run parsed it again; a failure
  // before anything was prepared closes nothing, and the next run parses it.
  t.equal(parsed.length, 4, 'each text parsed at its first run and after its refused value')
  t.equal(new Set(parsed).size, 2)
  t.equal((await app.inject('/fresh?bad')).statusCode, 500)
  t.same((await app.inject('/fresh')).json(), { c: 3 })
  t.equal(app.db.stats().destroyed, 0, 'one connection throughout')
  t.equal(await db.idleInTransaction(), 0)
})

t.test('a table whose columns changed under a named statement: that request fails, the next prepares afresh and sees the new column', async (t) => {
  const { db, app, parsed } = await setup(t, { preparedStatements: true })
  app.get('/items/:id', async (request) => request.db.selectFrom('items').selectAll().where('id', '=', idOf(request)).executeTakeFirst())
  t.same((await app.inject('/items/1')).json(), { id: 1, name: 'apple' })
  t.equal(parsed.length, 1)
  await db.query('ALTER TABLE items ADD COLUMN color text')
  await db.query("UPDATE items SET color = 'green' WHERE id = 1")
  const changed = await app.inject('/items/1')
  t.equal(changed.statusCode, 500)
  t.match(changed.json(), { code: '0A000', message: 'cached plan must not change result type' })
  t.equal(app.db.stats().rollbacks, 1)
  for (const round of [1, 2]) {
    const response = await app.inject('/items/1')
    t.equal(response.statusCode, 200, `round ${round}`)
    t.same(response.json(), { id: 1, name: 'apple', color: 'green' })
  }
  t.equal(parsed.length, 2, 'prepared afresh once')
  t.not(parsed[1], parsed[0], 'under a new name')
  t.match(parsed[1], NAME)
  t.equal(app.db.stats().destroyed, 0)
})

t.test('a column whose type changed under a named statement (42883): that request fails, the next prepares afresh', async (t) => {
  const { db, app, parsed } = await setup(t, { preparedStatements: true })
  await db.query('CREATE TABLE codes (code text PRIMARY KEY, label text NOT NULL)')
  await db.query("INSERT INTO codes VALUES ('7', 'seven')")
  app.get('/codes/:code', async (request) => sql<{ label: string }>`SELECT label FROM codes WHERE code = ${(request.params as { code: string }).code}`.execute(request.db).then(({ rows }) => rows[0] ?? null))
  t.same((await app.inject('/codes/7')).json(), { label: 'seven' })
  // The statement's parameter was typed text at its Parse; the column is an integer now.
  await db.query('ALTER TABLE codes ALTER COLUMN code TYPE int USING code::int')
  const changed = await app.inject('/codes/7')
  t.equal(changed.statusCode, 500)
  t.equal(changed.json().code, '42883', 'operator does not exist: integer = text')
  for (const round of [1, 2]) {
    const response = await app.inject('/codes/7')
    t.equal(response.statusCode, 200, `round ${round}: prepared afresh, its parameter typed for the new column`)
    t.same(response.json(), { label: 'seven' })
  }
  t.equal(parsed.length, 2, 'parsed once more, under a new name')
  t.not(parsed[1], parsed[0])
})

t.test('a text that goes stale a second time runs unnamed from then on: a per-request search_path over schemas of different shapes', async (t) => {
  const { db, app, parsed } = await setup(t, { preparedStatements: true })
  await db.query('CREATE SCHEMA narrow; CREATE SCHEMA wide')
  await db.query('CREATE TABLE narrow.things (id int PRIMARY KEY); INSERT INTO narrow.things VALUES (1)')
  await db.query("CREATE TABLE wide.things (id int PRIMARY KEY, extra text); INSERT INTO wide.things VALUES (1, 'x')")
  app.get('/:schema/:id', async (request) => {
    const { schema, id } = request.params as { schema: string, id: string }
    await sql`SELECT set_config('search_path', ${schema}, true)`.execute(request.db)
    return request.db.selectFrom('things').selectAll().where('id', '=', Number(id)).executeTakeFirst()
  })
  const statuses: number[] = []
  for (const schema of ['narrow', 'wide', 'narrow', 'wide', 'narrow', 'wide', 'narrow']) {
    const response = await app.inject(`/${schema}/1`)
    statuses.push(response.statusCode)
    if (response.statusCode === 200) t.same(response.json(), schema === 'narrow' ? { id: 1 } : { id: 1, extra: 'x' }, schema)
    else t.equal(response.json().code, '0A000', `${schema}: cached plan must not change result type`)
  }
  t.same(statuses, [200, 500, 200, 500, 200, 200, 200], 'two failures (the first prepared under narrow, its new name under narrow again), then unnamed: every request answered')
  // The set_config statement (it has a parameter) once; the select under two names, none after its second failure.
  t.equal(parsed.length, 3, 'three names parsed in all')
})

t.test('statements the server lost (DEALLOCATE ALL through fastify.db.kysely): each fails once with 26000, and is parsed again at its next run', async (t) => {
  const { app, parsed } = await setup(t, { preparedStatements: true })
  app.get('/items/:id', async (request) => twoQueries(request.db, idOf(request)))
  t.equal((await app.inject('/items/1')).statusCode, 200)
  t.equal(parsed.length, 2)
  // One connection in the pool: the one whose statements pg has recorded.
  await sql`DEALLOCATE ALL`.execute(app.db.kysely)
  // Each of the two texts fails once on that connection: the first in one request, the second
  // (which that request never reached) in the next.
  for (const round of [1, 2]) {
    const lost = await app.inject('/items/1')
    t.equal(lost.statusCode, 500, `lost ${round}`)
    t.equal(lost.json().code, '26000', 'prepared statement does not exist')
  }
  for (const round of [1, 2]) {
    const response = await app.inject('/items/2')
    t.equal(response.statusCode, 200, `round ${round}`)
    t.equal(response.json().name, 'pear')
  }
  t.equal(parsed.length, 4, 'both texts parsed again under their names, once')
  t.same(parsed.slice(2), parsed.slice(0, 2))
  t.equal(app.db.stats().destroyed, 0, 'the connection healed, not destroyed')
})

t.test('DEALLOCATE through request.db is refused: it would drop the statements pg has recorded as parsed', async (t) => {
  const { app } = await setup(t, { preparedStatements: true })
  app.get('/', async (request) => sql`DEALLOCATE ALL`.execute(request.db))
  const response = await app.inject('/')
  t.equal(response.json().code, 'FST_DB_SESSION_SESSION_STATE')
})

t.test('autocommit units run their queries with parameters as named statements too', async (t) => {
  const { app, parsed } = await setup(t, { preparedStatements: true, context: { 'app.who': () => 'me' } })
  const config = { db: { accessMode: 'read only', autocommit: true } } as const
  app.get('/items/:id', { config }, async (request) => {
    const settings = sql<{ who: string, ro: string, one: number }>`SELECT current_setting('app.who') AS who, current_setting('transaction_read_only') AS ro, ${1}::int AS one`
    const { rows } = await settings.execute(request.db)
    const result = await twoQueries(request.db, idOf(request))
    return { ...result, texts: [settings.compile(request.db).sql, ...result.texts], settings: rows[0] }
  })
  for (const [round, [id, name]] of [[1, 'apple'], [3, 'plum'], [2, 'pear']].entries()) {
    const body = (await app.inject(`/items/${id}`)).json()
    t.equal(body.name, name)
    t.equal(body.others, 2)
    t.same(body.settings, { who: 'me', ro: 'on', one: 1 }, 'the settings still reach a named query')
    t.same(body.prepared.map((p: Prepared) => p.statement), body.texts, 'each query a named statement')
    t.same(body.prepared.map((p: Prepared) => p.runs), [round + 1, round + 1, round + 1])
  }
  t.equal(parsed.length, 3, 'three texts, each parsed once')
})

t.test('fastify.db.transaction names its queries with parameters too', async (t) => {
  const { app, parsed } = await setup(t, { preparedStatements: true })
  for (const [id, name] of [[2, 'pear'], [1, 'apple']] as const) {
    const result = await app.db.transaction(async (trx) => twoQueries(trx, id))
    t.equal(result.name, name)
    t.equal(result.prepared.length, 2)
    t.same(result.prepared.map((p) => p.statement), result.texts)
  }
  t.equal(parsed.length, 2)
  t.equal(app.db.stats().commits, 2)
})

t.test('a statement first prepared inside a savepoint that is rolled back to stays prepared', async (t) => {
  const { app, parsed } = await setup(t, { preparedStatements: true })
  app.get('/', async (request) => {
    await sql`SELECT 1`.execute(request.db)
    let caught: string | undefined
    try {
      await request.savepoint(async (trx) => {
        await trx.selectFrom('items').select('name').where('id', '=', 1).execute()
        await sql`SELECT 6 / ${0}::int AS q`.execute(trx)
      })
    } catch (error) {
      caught = (error as { code?: string }).code
    }
    const row = await request.db.selectFrom('items').select('name').where('id', '=', 2).executeTakeFirst()
    const { rows } = await sql<{ q: number }>`SELECT 6 / ${3}::int AS q`.execute(request.db)
    return { caught, name: row?.name, q: rows[0].q, prepared: (await preparedOn(request.db)).length }
  })
  for (const round of [1, 2]) {
    const response = await app.inject('/')
    t.equal(response.statusCode, 200)
    t.same(response.json(), { caught: '22012', name: 'pear', q: 2, prepared: 2 }, `round ${round}: the statements outlive ROLLBACK TO SAVEPOINT`)
  }
  t.equal(parsed.length, 2, 'each parsed once, inside the savepoint of the first request')
  t.equal(app.db.stats().commits, 2)
})

t.test('a generic plan still reads each request\'s context at run time', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE notes (id int PRIMARY KEY, owner text NOT NULL, body text NOT NULL)')
  await db.query("INSERT INTO notes VALUES (1, 'acme', 'a1'), (2, 'acme', 'a2'), (3, 'globex', 'g1')")
  // From the first run on, not after PostgreSQL's five custom plans.
  await db.query(`ALTER DATABASE ${db.name} SET plan_cache_mode = force_generic_plan`)
  const app = await db.app({ maxConnections: 1, preparedStatements: true, context: { 'app.tenant': (request) => request.headers['x-tenant'] as string } }, SILENT)
  app.get('/notes', async (request) => {
    const rows = await request.db.selectFrom('notes').select('body')
      .where('owner', '=', sql<string>`current_setting('app.tenant')`).where('id', '>', 0).orderBy('id').execute()
    const { rows: plans } = await sql<{ generic: number }>`SELECT generic_plans::int AS generic FROM pg_prepared_statements`.execute(request.db)
    return { bodies: rows.map((row) => row.body), generic: plans.map((plan) => plan.generic) }
  })
  for (const [round, tenant] of ['acme', 'globex', 'acme', 'globex', 'globex', 'acme', 'globex'].entries()) {
    const body = (await app.inject({ url: '/notes', headers: { 'x-tenant': tenant } })).json()
    t.same(body.bodies, tenant === 'acme' ? ['a1', 'a2'] : ['g1'], `run ${round + 1}: ${tenant}'s notes only`)
    t.same(body.generic, [round + 1], 'on the one generic plan')
  }
})

t.test('through PgBouncer in session mode, each client connection keeps its statements', { skip: skipBouncer }, async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)')
  await db.query("INSERT INTO items VALUES (1, 'apple'), (2, 'pear'), (3, 'plum')")
  const bouncer = await startPgBouncer(t, db.url, 2, { pool_mode: 'session' })
  const app = await db.app({ connectionString: bouncer.urlFor(db.url), maxConnections: 2, preparedStatements: true }, SILENT)
  const parsed = recordNamedParses(app.db.pool)
  app.get('/items/:id', async (request) => twoQueries(request.db, idOf(request)))
  for (let round = 0; round < 3; round++) {
    const responses = await Promise.all([1, 2, 3].map((id) => app.inject(`/items/${id}`)))
    t.same(responses.map((response) => response.statusCode), [200, 200, 200])
    t.same(responses.map((response) => response.json().name), ['apple', 'pear', 'plum'])
    for (const response of responses) t.same(response.json().prepared.map((p: Prepared) => p.statement), response.json().texts)
  }
  const connections = app.db.stats().total
  t.equal(parsed.length, 2 * connections, `each text parsed once on each of the ${connections} connections`)
  t.equal(new Set(parsed).size, 2)
})

t.test('two registrations on one pool never give one name two texts', async (t) => {
  const db = await testDatabase(t)
  const pool = new pg.Pool({ connectionString: db.url, max: 1 })
  const apps = [Fastify(), Fastify()]
  try {
    for (const app of apps) await app.register(dbSession, { pool, preparedStatements: true })
    apps[0].get('/', async (request) => (await sql<{ x: number }>`SELECT ${1}::int AS x`.execute(request.db)).rows[0])
    apps[1].get('/', async (request) => (await sql<{ y: string }>`SELECT ${'b'}::text AS y`.execute(request.db)).rows[0])
    for (let round = 0; round < 2; round++) {
      t.same((await apps[0].inject('/')).json(), { x: 1 })
      t.same((await apps[1].inject('/')).json(), { y: 'b' })
    }
    const { rows } = await pool.query('SELECT name, statement FROM pg_prepared_statements ORDER BY prepare_time')
    t.same(rows.map((row) => row.statement), ['SELECT $1::int AS x', 'SELECT $1::text AS y'], 'both texts prepared on the one connection')
    t.not(rows[0].name, rows[1].name, 'under two names')
  } finally {
    for (const app of apps) await app.close()
    await pool.end()
  }
})

t.test('bad preparedStatements options fail registration and say what was expected', async (t) => {
  const db = await testDatabase(t)
  const cases: Array<[unknown, RegExp]> = [
    ['yes', /preparedStatements must be true, false or \{ max \}.*; instead got 'yes'/],
    [null, /preparedStatements must be true, false or \{ max \}.*; instead got 'null'/],
    [{ max: 0 }, /preparedStatements\.max must be an integer of at least 1; instead got '0'/],
    [{ max: 1.5 }, /preparedStatements\.max must be an integer of at least 1; instead got '1\.5'/],
    [{ other: 1 }, /unknown option 'preparedStatements\.other'; known is max/]
  ]
  for (const [value, message] of cases) {
    t.match(await registrationError({ connectionString: 'postgres://127.0.0.1:1/none', startupCheck: false, preparedStatements: value }),
      { code: 'FST_DB_SESSION_INVALID_OPTION', message }, JSON.stringify(value))
  }
  const app = await db.app({ preparedStatements: {} })
  app.get('/', async (request) => (await sql<{ x: number }>`SELECT ${7}::int AS x`.execute(request.db)).rows[0])
  t.same((await app.inject('/')).json(), { x: 7 }, '{} takes the default max')
})
