// Two registrations and the unit-of-work features: request.afterCommit, afterRollback and
// savepoint are the 'db' registration's; the other offers them as fastify.analytics.*(request, fn),
// each tied to its own database's outcome; retries read each registration's own route key.
import t from 'tap'
import { sql } from 'kysely'
import { names, nothingLeftOpen, setup } from './helpers/two-databases.js'

t.setTimeout(120_000)

t.test('callbacks follow their own database: a COMMIT that fails on analytics runs its afterRollback, while db\'s afterCommit ran', async (t) => {
  const s = await setup(t)
  const { app, main, analytics } = s
  const ran: string[] = []
  t.equal(typeof (app.analytics as unknown as Record<string, unknown>).afterCommit, 'function')
  app.post('/', async (request) => {
    await request.db.insertInto('items').values({ name: 'kept' }).execute()
    request.afterCommit(() => { ran.push('db committed') })
    request.afterRollback(() => { ran.push('db rolled back') })
    // Two equal codes: the deferred unique constraint fails at analytics' COMMIT.
    await request.analytics.insertInto('codes').values([{ code: 1 }, { code: 1 }]).execute()
    app.analytics.afterCommit(request, () => { ran.push('analytics committed') })
    app.analytics.afterRollback(request, () => { ran.push('analytics rolled back') })
    return { ok: true }
  })
  const response = await app.inject({ method: 'POST', url: '/' })
  t.equal(response.statusCode, 500)
  t.equal(response.json().code, 'FST_DB_SESSION_COMMIT_FAILED', 'the failed COMMIT is the response')
  t.same(ran.sort(), ['analytics rolled back', 'db committed'], 'each database\'s callbacks for its own outcome (independent transactions)')
  t.same(await names(main, 'items'), ['kept'])
  t.same((await analytics.query('SELECT code FROM codes')).rows, [])
  await nothingLeftOpen(t, s)
})

t.test('a savepoint on the analytics unit of work, through fastify.analytics.savepoint(request, fn)', async (t) => {
  const s = await setup(t)
  const { app, analytics } = s
  app.post('/', async (request) => {
    await request.analytics.insertInto('events').values({ name: 'before' }).execute()
    const failed = await app.analytics.savepoint(request, async (trx) => {
      await trx.insertInto('events').values({ name: 'inside' }).execute()
      throw new Error('undo the inside')
    }).catch((error: Error) => error.message)
    return { failed }
  })
  const response = await app.inject({ method: 'POST', url: '/' })
  t.same(response.json(), { failed: 'undo the inside' })
  t.same(await names(analytics, 'events'), ['before'])
  await nothingLeftOpen(t, s)
})

t.test('config.analytics.retries retries the route when the analytics unit of work hits a serialization failure', async (t) => {
  const s = await setup(t)
  const { app, main, analytics } = s
  let attempt = 0
  app.post('/', { config: { analytics: { retries: 1 } } }, async (request) => {
    const n = ++attempt
    await request.analytics.insertInto('events').values({ name: `attempt ${n}` }).execute()
    if (n === 1) await sql`DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$`.execute(request.analytics)
    return { attempt: n }
  })
  const response = await app.inject({ method: 'POST', url: '/' })
  t.equal(response.statusCode, 200)
  t.same(response.json(), { attempt: 2 })
  t.same(await names(analytics, 'events'), ['attempt 2'])
  t.equal(app.analytics.stats().retries, 1)
  t.equal(app.db.stats().retries, 0)
  t.same(await names(main, 'items'), [])
  await nothingLeftOpen(t, s)
})
