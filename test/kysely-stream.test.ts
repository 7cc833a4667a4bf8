// stream() with the cursor option (pg-cursor's class): on fastify.db.kysely, a session of its own;
// on request.db and fastify.db.transaction, inside the unit of work, which lends it the connection
// for as long as the stream is open.
import t from 'tap'
import Cursor from 'pg-cursor'
import { sql } from 'kysely'
import type { Generated, Kysely } from 'kysely'
import { testDatabase } from './helpers/database.js'

interface Database { items: { id: Generated<number>, name: string } }

t.test('fastify.db.kysely streams with the cursor option, outside a transaction and in its own; connections go back', async (t) => {
  const db = await testDatabase(t)
  await db.query("CREATE TABLE items (id serial PRIMARY KEY, name text); INSERT INTO items (name) SELECT 'item ' || n FROM generate_series(1, 25) AS n")
  const app = await db.app({ cursor: Cursor })
  const kysely = app.db.kysely as Kysely<Database>
  const ids: number[] = []
  for await (const row of kysely.selectFrom('items').select('id').orderBy('id').stream(10)) ids.push(row.id)
  t.same(ids, Array.from({ length: 25 }, (_, i) => i + 1), 'every row, in chunks of 10')
  const inTransaction = await kysely.transaction().execute(async (trx) => {
    await trx.insertInto('items').values({ name: 'streamed in a transaction' }).execute()
    const names: string[] = []
    for await (const row of trx.selectFrom('items').select('name').where('name', 'like', 'streamed%').stream()) names.push(row.name)
    return names
  })
  t.same(inTransaction, ['streamed in a transaction'])
  t.match(app.db.stats(), { active: 0, destroyed: 0 })
  t.equal(await db.idleInTransaction(), 0)
})

t.test('without the cursor option: request.db and fastify.db.transaction refuse with a coded error, fastify.db.kysely with Kysely\'s', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  const first = async (rows: AsyncIterableIterator<unknown>) => rows.next().then(() => 'streamed', (error: { code?: string, message: string }) => error.code ?? error.message)
  t.equal(await app.db.transaction((trx) => first(trx.selectNoFrom((eb) => eb.val(1).as('one')).stream())), 'FST_DB_SESSION_STREAM_UNSUPPORTED')
  t.match(await first(app.db.kysely.selectNoFrom((eb) => eb.val(1).as('one')).stream()), /`cursor` is not present in your postgres dialect config/)
  t.equal(app.db.stats().active, 0)
})

t.test('a stream on request.db holds the unit\'s queue: a query issued meanwhile runs after the stream ends', async (t) => {
  const db = await testDatabase(t)
  await db.query("CREATE TABLE items (id serial PRIMARY KEY, name text); INSERT INTO items (name) SELECT 'item ' || n FROM generate_series(1, 6) AS n")
  const app = await db.app({ cursor: Cursor })
  app.post('/', async (request) => {
    const trx = request.db as unknown as Kysely<Database>
    const events: string[] = []
    const stream = trx.selectFrom('items').select('id').orderBy('id').stream(2)
    const first = await stream.next()
    events.push(`row ${first.value.id}`)
    // Issued while the cursor is open: it waits in the unit's queue, and sees the stream's work.
    const meanwhile = trx.insertInto('items').values({ name: 'after the stream' }).returning('id').executeTakeFirstOrThrow()
      .then(({ id }) => { events.push(`inserted ${id}`) })
    for await (const row of stream) events.push(`row ${row.id}`)
    await meanwhile
    return events
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.same(res.json(), ['row 1', 'row 2', 'row 3', 'row 4', 'row 5', 'row 6', 'inserted 7'])
  t.equal((await db.query('SELECT count(*)::int AS n FROM items')).rows[0].n, 7, 'committed')
  t.match(app.db.stats(), { active: 0, commits: 1 })
})

t.test('a stream through request.db checks the session-state guard like any query', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ cursor: Cursor })
  const refused = await app.db.transaction(async (trx) => {
    const rows = trx.selectNoFrom(sql<string>`set_config('work_mem', '1MB', false)`.as('s')).stream()
    return rows.next().then(() => 'streamed', (error: { code: string }) => error.code)
  })
  t.equal(refused, 'FST_DB_SESSION_SESSION_STATE')
})

t.test('the cursor option must be a class', async (t) => {
  const db = await testDatabase(t)
  await t.rejects(db.app({ cursor: 'pg-cursor' as never }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /cursor must be pg-cursor's class .* instead got 'pg-cursor'/ })
})
