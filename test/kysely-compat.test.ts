// Kysely's public surface on a Transaction, one test per feature: the same body through request.db
// (app.inject), fastify.db.transaction and a plain Kysely transaction (PostgresDialect on its own
// pg.Pool) on one database, with the same outcome, or the difference the README documents.
import t from 'tap'
import type { Test } from 'tap'
import { CamelCasePlugin, CompiledQuery, NoResultError, sql } from 'kysely'
import type { KyselyPlugin, PluginTransformQueryArgs, PluginTransformResultArgs, QueryResult, RootOperationNode, Transaction, UnknownRow } from 'kysely'
import { jsonArrayFrom, jsonObjectFrom } from 'kysely/helpers/postgres'
import { eventually } from './helpers/database.js'
import { describe, threeWays, WAYS } from './helpers/three-ways.js'
import type { Outcome, ThreeWays, Way } from './helpers/three-ways.js'

const SCHEMA = `
  CREATE TABLE people (id serial PRIMARY KEY, first_name text NOT NULL, last_name text, way text NOT NULL);
  CREATE TABLE pets (id serial PRIMARY KEY, owner_id int NOT NULL REFERENCES people (id), name text NOT NULL);
  CREATE TABLE unique_names (name text PRIMARY KEY);
  CREATE SCHEMA other;
  CREATE TABLE other.things (id serial PRIMARY KEY, label text NOT NULL, way text NOT NULL);
`

/** The three outcomes are the same: `expected`, for each way (a request's with status 200). */
function same (t: Test, outcomes: Record<Way, Outcome>, expected: Outcome, message = 'the same outcome each way'): void {
  const { status = expected.error === undefined ? 200 : 500, ...outcome } = expected
  t.same(outcomes, { 'request.db': { ...outcome, status }, 'fastify.db.transaction': outcome, 'plain Kysely': outcome }, message)
}

/** Inserts Ada and Grace for `way`, with a pet each; nothing a body returns depends on ids. */
async function seed (trx: Transaction<any>, way: Way): Promise<void> {
  const people = await trx.insertInto('people')
    .values([{ first_name: 'Ada', last_name: 'Lovelace', way }, { first_name: 'Grace', last_name: 'Hopper', way }])
    .returning(['id', 'first_name']).execute()
  await trx.insertInto('pets').values(people.map(({ id, first_name: firstName }) => ({ owner_id: id, name: `${firstName}'s cat` }))).execute()
}

let shared: ThreeWays
t.before(async () => { shared = await threeWays(t, {}, SCHEMA) })
// Every unit of work of this file gave its connection back; each test starts from empty tables.
t.afterEach(async () => {
  t.equal(shared.app.db.stats().active, 0)
  await shared.db.query('TRUNCATE people, pets, unique_names, other.things RESTART IDENTITY CASCADE')
})

t.test('select, insert, update and delete with returning', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    const inserted = await trx.insertInto('people').values([{ first_name: 'Ada', way }, { first_name: 'Alan', way }]).returning(['first_name']).execute()
    const updated = await trx.updateTable('people').set({ last_name: 'Turing' }).where('first_name', '=', 'Alan').where('way', '=', way).returning(['first_name', 'last_name']).executeTakeFirstOrThrow()
    const deleted = await trx.deleteFrom('people').where('first_name', '=', 'Ada').where('way', '=', way).returningAll().execute()
    const result = await trx.updateTable('people').set({ last_name: 'M. Turing' }).where('way', '=', way).executeTakeFirst()
    const left = await trx.selectFrom('people').select(['first_name', 'last_name']).where('way', '=', way).execute()
    return { inserted, updated, deleted: deleted.map((row) => row.first_name), updatedRows: result.numUpdatedRows, left }
  })
  same(t, outcomes, {
    value: {
      inserted: [{ first_name: 'Ada' }, { first_name: 'Alan' }],
      updated: { first_name: 'Alan', last_name: 'Turing' },
      deleted: ['Ada'],
      updatedRows: '1',
      left: [{ first_name: 'Alan', last_name: 'M. Turing' }]
    }
  })
  t.equal((await shared.db.query("SELECT count(*)::int AS n FROM people WHERE last_name = 'M. Turing'")).rows[0].n, 3, 'committed each way')
})

t.test('withPlugin(CamelCasePlugin) on the transaction', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    const camel = trx.withPlugin(new CamelCasePlugin())
    await camel.insertInto('people').values({ firstName: 'Katherine', lastName: 'Johnson', way }).execute()
    return camel.selectFrom('people').select(['firstName', 'lastName']).where('firstName', '=', 'Katherine').where('way', '=', way).execute()
  })
  same(t, outcomes, { value: [{ firstName: 'Katherine', lastName: 'Johnson' }] })
})

/** A plugin whose transformResult adds a row count to every result, and counts the queries it saw. */
class CountingPlugin implements KyselyPlugin {
  queries = 0
  transformQuery ({ node }: PluginTransformQueryArgs): RootOperationNode {
    this.queries++
    return node
  }

  async transformResult ({ result }: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return { ...result, rows: result.rows.map((row) => ({ ...row, seen: result.rows.length })) }
  }
}

t.test("a custom plugin's transformResult, added on the transaction", async (t) => {
  const outcomes = await shared.run(async (trx) => {
    const plugin = new CountingPlugin()
    const rows = await trx.withPlugin(plugin).selectNoFrom((eb) => [eb.val(1).as('one')]).execute()
    return { rows, queries: plugin.queries }
  })
  same(t, outcomes, { value: { rows: [{ one: 1, seen: 1 }], queries: 1 } })
})

t.test('plugins registered with the plugin (and the plain Kysely) run on every query; withoutPlugins() drops them', async (t) => {
  const camel = await threeWays(t, { plugins: [new CamelCasePlugin()] }, SCHEMA)
  const outcomes = await camel.run(async (trx, way) => {
    await seed(trx.withoutPlugins(), way)
    const camelCase = await trx.selectFrom('people').select(['firstName']).where('way', '=', way).orderBy('firstName').execute()
    const snakeCase = await trx.withoutPlugins().selectFrom('people').select(['first_name']).where('way', '=', way).orderBy('first_name').execute()
    const counted = await trx.withPlugin(new CountingPlugin()).selectFrom('people').select(['lastName']).where('way', '=', way).orderBy('lastName').execute()
    return { camelCase, snakeCase, counted }
  })
  same(t, outcomes, {
    value: {
      camelCase: [{ firstName: 'Ada' }, { firstName: 'Grace' }],
      snakeCase: [{ first_name: 'Ada' }, { first_name: 'Grace' }],
      counted: [{ lastName: 'Hopper', seen: 2 }, { lastName: 'Lovelace', seen: 2 }]
    }
  })
})

t.test('withSchema', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    const other = trx.withSchema('other')
    await other.insertInto('things').values({ label: 'in other', way }).execute()
    return other.selectFrom('things').select('label').where('way', '=', way).execute()
  })
  same(t, outcomes, { value: [{ label: 'in other' }] })
})

t.test('executeTakeFirstOrThrow: NoResultError, or the error it is given; the transaction goes on', async (t) => {
  const outcomes = await shared.run(async (trx) => {
    const none = await trx.selectFrom('people').selectAll().where('first_name', '=', 'nobody').executeTakeFirstOrThrow().then(() => 'found', (error) => error instanceof NoResultError)
    const own = await trx.selectFrom('people').selectAll().where('first_name', '=', 'nobody').executeTakeFirstOrThrow(() => new RangeError('none')).then(() => 'found', describe)
    const after = await trx.selectNoFrom((eb) => eb.val('still open').as('state')).executeTakeFirstOrThrow()
    return { none, own, after }
  })
  same(t, outcomes, { value: { none: true, own: 'RangeError', after: { state: 'still open' } } })
})

t.test('sql template: parameters, sql.raw, several statements in one raw query', async (t) => {
  const outcomes = await shared.run(async (trx) => {
    const sum = await sql<{ n: number }>`SELECT ${1}::int + ${2}::int AS n`.execute(trx)
    const raw = await sql<{ word: string }>`SELECT ${sql.raw("'raw'")} AS word`.execute(trx)
    const several = await sql`SELECT 1; SELECT 2`.execute(trx)
    const command = await sql`UPDATE people SET last_name = last_name WHERE false`.execute(trx)
    return { sum: sum.rows, raw: raw.rows, several: several.rows, affected: command.numAffectedRows }
  })
  same(t, outcomes, { value: { sum: [{ n: 3 }], raw: [{ word: 'raw' }], several: [], affected: '0' } })
})

t.test('sql.ref, sql.lit, sql.id, sql.table, sql.join, sql.val', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    await seed(trx, way)
    const { rows } = await sql<{ first_name: string, literal: string, joined: number }>`
      SELECT ${sql.ref('people.first_name')}, ${sql.lit('lit')} AS literal, ${sql.join([sql.val(1), sql.val(2)], sql`::int + `)}::int AS joined
      FROM ${sql.table('people')} WHERE ${sql.id('way')} = ${way} ORDER BY 1`.execute(trx)
    return rows
  })
  same(t, outcomes, { value: [{ first_name: 'Ada', literal: 'lit', joined: 3 }, { first_name: 'Grace', literal: 'lit', joined: 3 }] })
})

t.test('with: CTEs, a data-modifying one included', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    await seed(trx, way)
    const read = await trx.with('mine', (db) => db.selectFrom('people').select(['first_name']).where('way', '=', way))
      .selectFrom('mine').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow()
    const written = await trx.with('added', (db) => db.insertInto('people').values({ first_name: 'Hedy', way }).returning('first_name'))
      .selectFrom('added').selectAll().execute()
    return { read, written }
  })
  same(t, outcomes, { value: { read: { n: '2' }, written: [{ first_name: 'Hedy' }] } })
})

t.test('$if', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    await seed(trx, way)
    const query = (withLastName: boolean) => trx.selectFrom('people').select('first_name')
      .$if(withLastName, (qb) => qb.select('last_name')).where('way', '=', way).orderBy('first_name').limit(1)
    return { plain: await query(false).execute(), more: await query(true).execute() }
  })
  same(t, outcomes, { value: { plain: [{ first_name: 'Ada' }], more: [{ first_name: 'Ada', last_name: 'Lovelace' }] } })
})

t.test('jsonArrayFrom and jsonObjectFrom (kysely/helpers/postgres)', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    await seed(trx, way)
    return trx.selectFrom('people').select((eb) => [
      'first_name',
      jsonArrayFrom(eb.selectFrom('pets').select('pets.name').whereRef('pets.owner_id', '=', 'people.id')).as('pets'),
      jsonObjectFrom(eb.selectFrom('people as me').select('me.last_name as last').whereRef('me.id', '=', 'people.id')).as('details')
    ]).where('way', '=', way).orderBy('first_name').execute()
  })
  same(t, outcomes, {
    value: [
      { first_name: 'Ada', pets: [{ name: "Ada's cat" }], details: { last: 'Lovelace' } },
      { first_name: 'Grace', pets: [{ name: "Grace's cat" }], details: { last: 'Hopper' } }
    ]
  })
})

t.test('introspection: getSchemas, getTables (with columns) inside the transaction', async (t) => {
  const outcomes = await shared.run(async (trx) => {
    // A table the transaction made is seen by its own introspection.
    await trx.schema.createTable('made_here').addColumn('id', 'integer').execute()
    const schemas = (await trx.introspection.getSchemas()).map((schema) => schema.name).filter((name) => ['public', 'other'].includes(name)).sort()
    const tables = await trx.introspection.getTables()
    const made = tables.find((table) => table.name === 'made_here')
    await trx.schema.dropTable('made_here').execute()
    return { schemas, tables: tables.map((table) => `${table.schema}.${table.name}`).sort(), made: made?.columns.map((column) => [column.name, column.dataType]) }
  })
  same(t, outcomes, {
    value: {
      schemas: ['other', 'public'],
      tables: ['other.things', 'public.made_here', 'public.people', 'public.pets', 'public.unique_names'],
      made: [['id', 'int4']]
    }
  })
})

t.test('explain()', async (t) => {
  const outcomes = await shared.run(async (trx) => {
    const plan = await trx.selectFrom('people').select('first_name').where('id', '=', 1).explain()
    const json = await trx.selectFrom('people').select('first_name').explain('json')
    return { keys: Object.keys(plan[0]), text: typeof plan[0]['QUERY PLAN'], json: Object.keys((json[0]['QUERY PLAN'] as Array<{ Plan: object }>)[0]) }
  })
  same(t, outcomes, { value: { keys: ['QUERY PLAN'], text: 'string', json: ['Plan'] } })
})

t.test('compile() sends nothing; executeQuery(compiled) and CompiledQuery.raw run it in the transaction', async (t) => {
  const before = shared.app.db.stats().acquires
  const compiled: Record<string, unknown> = {}
  const outcomes = await shared.run(async (trx, way) => {
    const query = trx.selectFrom('people').select('first_name').where('way', '=', way).where('first_name', '=', 'nobody')
    const { sql: text, parameters } = query.compile()
    compiled[way] = { text, parameters: parameters.slice(1) }
    const executed = await trx.executeQuery(query.compile())
    const raw = await trx.executeQuery(CompiledQuery.raw('SELECT $1::text AS echo', ['raw']))
    const xid = await trx.executeQuery(CompiledQuery.raw('SELECT pg_current_xact_id_if_assigned() IS NULL AS unassigned, now() = statement_timestamp() AS first'))
    return { executed: executed.rows, raw: raw.rows, inTransaction: xid.rows }
  })
  same(t, outcomes, { value: { executed: [], raw: [{ echo: 'raw' }], inTransaction: [{ unassigned: true, first: false }] } })
  t.same(new Set(Object.values(compiled).map((query) => JSON.stringify(query))).size, 1, 'the same SQL each way')
  t.equal(shared.app.db.stats().acquires - before, 2, 'one connection per unit of work')
  // compile() alone takes no connection.
  const idle = await shared.runOne('request.db', async (trx) => trx.selectFrom('people').selectAll().compile().sql)
  t.same(idle, { value: 'select * from "people"', status: 200 })
  t.equal(shared.app.db.stats().acquires - before, 2, 'a request that only compiled took no connection')
})

t.test('transaction(), startTransaction() and connection() on a Transaction are refused: no nesting', async (t) => {
  const outcomes = await shared.run(async (trx) => {
    const refusal = (fn: () => unknown) => { try { fn(); return 'allowed' } catch (error) { return (error as Error).message } }
    return {
      transaction: refusal(() => trx.transaction()),
      startTransaction: refusal(() => trx.startTransaction()),
      connection: refusal(() => trx.connection())
    }
  })
  same(t, outcomes, {
    value: {
      transaction: 'calling the transaction method for a Transaction is not supported',
      startTransaction: 'calling the controlled transaction method for a Transaction is not supported',
      connection: 'calling the connection method for a Transaction is not supported'
    }
  })
})

t.test('isTransaction, getExecutor(): adapter, plugins, compile through the executor', async (t) => {
  const outcomes = await shared.run(async (trx) => {
    const executor = trx.getExecutor()
    const node = trx.selectFrom('people').select('first_name').toOperationNode()
    return {
      isTransaction: trx.isTransaction,
      supportsReturning: executor.adapter.supportsReturning,
      supportsTransactionalDdl: executor.adapter.supportsTransactionalDdl,
      plugins: executor.plugins.length,
      withPlugin: executor.withPlugin(new CamelCasePlugin()).plugins.length,
      sql: executor.compileQuery(executor.transformQuery(node, { queryId: 'q' }), { queryId: 'q' }).sql
    }
  })
  same(t, outcomes, { value: { isTransaction: true, supportsReturning: true, supportsTransactionalDdl: true, plugins: 0, withPlugin: 1, sql: 'select "first_name" from "people"' } })
})

t.test('schema builder (DDL) inside the transaction is rolled back with it', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    await trx.schema.createTable(`ddl_${way.replace(/\W/g, '_')}`).addColumn('id', 'serial', (col) => col.primaryKey()).execute()
    throw new Error('roll it back')
  })
  same(t, outcomes, { error: 'Error' })
  t.equal((await shared.db.query("SELECT count(*)::int AS n FROM pg_tables WHERE tablename LIKE 'ddl_%'")).rows[0].n, 0, 'no table left')
})

t.test('mergeInto (MERGE) counts its rows', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    await seed(trx, way)
    const result = await trx.mergeInto('people as target').using('pets', (join) => join.onRef('pets.owner_id', '=', 'target.id').on('target.way', '=', way))
      .whenMatched().thenUpdateSet({ last_name: 'has a cat' }).executeTakeFirstOrThrow()
    const changed = await trx.selectFrom('people').select('last_name').where('way', '=', way).distinct().execute()
    return { updated: result.numChangedRows, changed }
  })
  same(t, outcomes, { value: { updated: '2', changed: [{ last_name: 'has a cat' }] } })
})

t.test('a unique violation, then 25P02 for every statement after it; a body that returns anyway commits nothing', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    await trx.insertInto('unique_names').values({ name: `taken by ${way}` }).execute()
    const duplicate = await trx.insertInto('unique_names').values({ name: `taken by ${way}` }).execute().then(() => 'inserted', describe)
    const next = await trx.selectFrom('unique_names').selectAll().execute().then(() => 'ran', describe)
    return { duplicate, next }
  })
  // The outcome of the commit is each way's own: the plugin's coded error; Kysely's AbortedTransactionError.
  t.same(outcomes, {
    'request.db': { error: 'FST_DB_SESSION_TRANSACTION_ABORTED', status: 500 },
    'fastify.db.transaction': { error: 'FST_DB_SESSION_TRANSACTION_ABORTED' },
    'plain Kysely': { error: 'AbortedTransactionError' }
  })
  const caught = await shared.run(async (trx, way) => {
    await trx.insertInto('unique_names').values({ name: `again ${way}` }).execute()
    const duplicate = await trx.insertInto('unique_names').values({ name: `again ${way}` }).execute().then(() => 'inserted', describe)
    const next = await trx.selectFrom('unique_names').selectAll().execute().then(() => 'ran', describe)
    throw new Error(`${duplicate} ${next}`)
  })
  same(t, caught, { error: 'Error' })
  t.same((await shared.db.query('SELECT name FROM unique_names')).rows, [], 'nothing committed')
})

t.test('the errors the statements see: 23505 then 25P02, the same each way', async (t) => {
  const seen: Record<string, unknown> = {}
  await shared.run(async (trx, way) => {
    await trx.insertInto('unique_names').values({ name: `seen ${way}` }).execute()
    seen[way] = {
      duplicate: await trx.insertInto('unique_names').values({ name: `seen ${way}` }).execute().then(() => 'inserted', describe),
      next: await trx.selectFrom('unique_names').selectAll().execute().then(() => 'ran', describe)
    }
    throw new Error('roll back')
  })
  for (const way of WAYS) t.same(seen[way], { duplicate: '23505', next: '25P02' }, way)
})

t.test('a query after the transaction ended is refused; each way with its own error', async (t) => {
  const kept: Partial<Record<Way, Transaction<any>>> = {}
  await shared.run(async (trx, way) => {
    kept[way] = trx
    return trx.selectNoFrom((eb) => eb.val(1).as('one')).execute()
  })
  const late: Record<string, string> = {}
  for (const way of WAYS) late[way] = await (kept[way] as Transaction<any>).selectNoFrom((eb) => eb.val(1).as('one')).execute().then(() => 'ran', (error: Error) => `${describe(error)}: ${error.message.slice(0, 40)}`)
  t.match(late, {
    'request.db': /^FST_DB_SESSION_TRANSACTION_FINISHED/,
    'fastify.db.transaction': /^FST_DB_SESSION_TRANSACTION_FINISHED/,
    'plain Kysely': /^Error: Transaction is already committed/
  })
})

t.test('abort signals: a signal never aborted, one aborted before the query, and "ignore query" while it runs', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    const fine = await trx.selectNoFrom((eb) => eb.val(1).as('one')).execute({ signal: new AbortController().signal })
    const early = await trx.selectNoFrom((eb) => eb.val(1).as('one')).execute({ signal: AbortSignal.abort() }).then(() => 'ran', describe)
    // 'ignore query' (Kysely's default): the caller stops waiting; the statement runs on, and the next query waits for it.
    const controller = new AbortController()
    const marker = `ignored ${way}`
    const ignored = sql`SELECT pg_sleep(0.5), ${marker}::text`.execute(trx, { signal: controller.signal, inflightQueryAbortStrategy: 'ignore query' }).then(() => 'finished', describe)
    const running = () => shared.db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(0.5)%'")
    await eventually(running, ({ rows }) => rows[0].n === 1)
    controller.abort()
    const aborted = await ignored
    const stillRunning = (await running()).rows[0].n
    const next = await trx.selectNoFrom((eb) => eb.val('next').as('query')).executeTakeFirstOrThrow()
    return { fine, early, aborted, stillRunning, next }
  })
  same(t, outcomes, { value: { fine: [{ one: 1 }], early: 'AbortError', aborted: 'AbortError', stillRunning: 1, next: { query: 'next' } } })
})

// 'cancel query' and 'kill session' are tested the three ways in kysely-abort-strategies.test.ts.

t.test('stream(): the same chunks each way, inside the transaction', async (t) => {
  const outcomes = await shared.run(async (trx, way) => {
    await trx.insertInto('other.things').values(Array.from({ length: 5 }, (_, i) => ({ label: `row ${i}`, way: `stream ${way}` }))).execute()
    const chunks: string[][] = []
    for await (const row of trx.selectFrom('other.things').select('label').where('way', '=', `stream ${way}`).orderBy('label').stream(2)) {
      chunks.push([row.label])
    }
    // The transaction goes on after the stream, on the same connection.
    const after = await trx.selectFrom('other.things').select((eb) => eb.fn.countAll<string>().as('n')).where('way', '=', `stream ${way}`).executeTakeFirstOrThrow()
    return { labels: chunks.flat(), after }
  })
  same(t, outcomes, { value: { labels: ['row 0', 'row 1', 'row 2', 'row 3', 'row 4'], after: { n: '5' } } })
})

t.test('stream() as the first query, and a stream left early (break)', async (t) => {
  const outcomes = await shared.run(async (trx) => {
    const seen: number[] = []
    for await (const row of trx.selectNoFrom(sql<number>`generate_series(1, 100)`.as('n')).stream(10)) {
      seen.push(row.n)
      if (seen.length === 3) break
    }
    const inTransaction = await sql<{ open: boolean }>`SELECT now() <> statement_timestamp() AS open`.execute(trx)
    return { seen, inTransaction: inTransaction.rows }
  })
  same(t, outcomes, { value: { seen: [1, 2, 3], inTransaction: [{ open: true }] } })
})

t.test('stream(): a failing statement, then 25P02', async (t) => {
  const seen: Record<string, unknown> = {}
  const outcomes = await shared.run(async (trx, way) => {
    const streamed = async () => { for await (const row of trx.selectNoFrom(sql<number>`1 / 0`.as('n')).stream()) t.fail(`a row: ${row.n}`) }
    const failed = await streamed().then(() => 'streamed', describe)
    const next = await trx.selectNoFrom((eb) => eb.val(1).as('one')).execute().then(() => 'ran', describe)
    seen[way] = { failed, next }
    throw new Error('roll back')
  })
  same(t, outcomes, { error: 'Error' })
  for (const way of WAYS) t.same(seen[way], { failed: '22012', next: '25P02' }, way)
})
