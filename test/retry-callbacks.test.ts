// Retries and callbacks together: an attempt that a conflict ended is a rolled-back unit of work,
// so its afterCommit callbacks never run and its afterRollback ones do; only the attempt that
// committed runs afterCommit, once.
import t from 'tap'
import { sql } from 'kysely'
import { testDatabase } from './helpers/database.js'

// A real 40001 from PostgreSQL, raised by the server on demand: the retry does not care which
// statement conflicted, only that the unit of work ended with a serialization failure.
const conflict = sql`DO $$ BEGIN RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001'; END $$`

t.test('a route\'s failed attempt runs its afterRollback callbacks and drops its afterCommit ones; the attempt that commits runs afterCommit once', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text NOT NULL)')
  const app = await db.app({ retries: 2, retryDelayMillis: 1 })
  const ran: string[] = []
  let attempt = 0
  app.post('/', async (request) => {
    const n = ++attempt
    await request.db.insertInto('items').values({ name: `attempt ${n}` }).execute()
    request.afterCommit(() => { ran.push(`afterCommit ${n}`) })
    request.afterRollback(() => { ran.push(`afterRollback ${n}`) })
    if (n < 3) await conflict.execute(request.db)
    return { attempt: n }
  })
  const response = await app.inject({ method: 'POST', url: '/' })
  t.equal(response.statusCode, 200)
  t.same(response.json(), { attempt: 3 })
  t.same(ran, ['afterRollback 1', 'afterRollback 2', 'afterCommit 3'], 'each failed attempt as a rollback, the last as a commit')
  t.same((await db.query('SELECT name FROM items')).rows, [{ name: 'attempt 3' }])
  t.equal(app.db.stats().retries, 2)
})

t.test('retries run out: every attempt\'s afterRollback ran, no afterCommit, and the client gets the 409', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ retries: 1, retryDelayMillis: 1 })
  const ran: string[] = []
  let attempt = 0
  app.post('/', async (request) => {
    const n = ++attempt
    request.afterCommit(() => { ran.push(`afterCommit ${n}`) })
    request.afterRollback(() => { ran.push(`afterRollback ${n}`) })
    await conflict.execute(request.db)
    return 'unreachable'
  })
  const response = await app.inject({ method: 'POST', url: '/' })
  t.equal(response.statusCode, 409)
  t.equal(response.json().code, 'FST_DB_SESSION_SERIALIZATION_FAILURE')
  t.same(ran, ['afterRollback 1', 'afterRollback 2'])
})

t.test('fastify.db.transaction: a failed attempt\'s unit runs afterRollback; the committed one runs afterCommit before transaction() resolves', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  const ran: string[] = []
  let attempt = 0
  const result = await app.db.transaction(async (trx, unit) => {
    const n = ++attempt
    unit.afterCommit(() => { ran.push(`afterCommit ${n}`) })
    unit.afterRollback(() => { ran.push(`afterRollback ${n}`) })
    if (n === 1) await conflict.execute(trx)
    return n
  }, { retries: 1 })
  t.equal(result, 2)
  t.same(ran, ['afterRollback 1', 'afterCommit 2'])
})

t.test('a conflict a savepoint caught is the handler\'s to handle: the unit of work that then commits is not run again', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text NOT NULL)')
  const app = await db.app({ retries: 1, retryDelayMillis: 1 })
  let attempt = 0
  app.post('/', async (request) => {
    const n = ++attempt
    await request.db.insertInto('items').values({ name: `attempt ${n}` }).execute()
    const caught = await request.savepoint(async (trx) => conflict.execute(trx)).then(() => null, (error) => error.code)
    return { attempt: n, caught }
  })
  const response = await app.inject({ method: 'POST', url: '/' })
  t.equal(response.statusCode, 200)
  // PostgreSQL's COMMIT is what guarantees a serializable outcome: once it succeeded, running the
  // handler again would do the work twice.
  t.same(response.json(), { attempt: 1, caught: 'FST_DB_SESSION_SERIALIZATION_FAILURE' })
  t.same((await db.query('SELECT name FROM items')).rows, [{ name: 'attempt 1' }])
  t.equal(app.db.stats().retries, 0)
})
