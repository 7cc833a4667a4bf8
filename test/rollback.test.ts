import t from 'tap'
import type { Test } from 'tap'
import { testDatabase } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'

async function setup (t: Test, options = {}): Promise<{ db: TestDatabase, app: Awaited<ReturnType<TestDatabase['app']>> }> {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text NOT NULL)')
  const app = await db.app(options)
  return { db, app }
}

async function names (db: TestDatabase): Promise<string[]> {
  return (await db.query('SELECT name FROM items ORDER BY name')).rows.map((row) => row.name)
}

t.test('a thrown error rolls back', async (t) => {
  const { db, app } = await setup(t)
  app.post('/', async (request) => {
    await request.db.insertInto('items').values({ name: 'thrown' }).execute()
    throw new Error('boom')
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 500)
  t.same(await names(db), [])
  t.equal(app.db.stats().rollbacks, 1)
  t.equal(app.db.stats().commits, 0)
  t.equal(await db.idleInTransaction(), 0)
})

t.test('an error status sent without a throw rolls back (no onError runs)', async (t) => {
  const { db, app } = await setup(t)
  app.post('/', async (request, reply) => {
    await request.db.insertInto('items').values({ name: 'five hundred' }).execute()
    return reply.code(500).send({ failed: true })
  })
  app.post('/bad', async (request, reply) => {
    await request.db.insertInto('items').values({ name: 'four hundred' }).execute()
    return reply.code(422).send({ invalid: true })
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 500)
  t.equal((await app.inject({ method: 'POST', url: '/bad' })).statusCode, 422)
  t.same(await names(db), [])
  t.equal(app.db.stats().rollbacks, 2)
})

t.test('commitWhen decides; a throwing commitWhen rolls back and fails the request', async (t) => {
  const { db, app } = await setup(t, {
    commitWhen: (request: { headers: Record<string, unknown> }, reply: { statusCode: number }) => {
      if (request.headers['x-explode'] !== undefined) throw new Error('commitWhen exploded')
      return reply.statusCode < 300 && request.headers['x-dry-run'] === undefined
    }
  })
  app.post('/', async (request, reply) => {
    await request.db.insertInto('items').values({ name: String(request.headers['x-name']) }).execute()
    return reply.code(Number(request.headers['x-status'] ?? 200)).send({ ok: true })
  })
  t.equal((await app.inject({ method: 'POST', url: '/', headers: { 'x-name': 'kept' } })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: '/', headers: { 'x-name': 'dry', 'x-dry-run': '1' } })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: '/', headers: { 'x-name': 'redirect', 'x-status': '302' } })).statusCode, 302)
  const exploded = await app.inject({ method: 'POST', url: '/', headers: { 'x-name': 'exploded', 'x-explode': '1' } })
  t.equal(exploded.statusCode, 500)
  t.match(exploded.json(), { message: 'commitWhen exploded' })
  t.same(await names(db), ['kept'])
  t.equal(await db.idleInTransaction(), 0)
})

t.test('a caught failed query makes COMMIT fail loudly instead of answering 200', async (t) => {
  const { db, app } = await setup(t)
  app.post('/', async (request) => {
    await request.db.insertInto('items').values({ name: 'before' }).execute()
    await request.db.insertInto('items').values({ name: null as unknown as string }).execute().catch(() => {})
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  // The caught failure aborted the transaction: COMMIT rolls back, and the client is told.
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_DB_SESSION_TRANSACTION_ABORTED')
  t.same(await names(db), [])
  t.equal(app.db.stats().commitFailures, 1)
  t.equal(app.db.stats().active, 0)
})
