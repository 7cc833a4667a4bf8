// fastify.close() rolls back a transaction that is still running; whatever finishes it later
// (onSend for a request, fastify.db.transaction() when fn resolves) must not report success.
import t from 'tap'
import http from 'node:http'
import { sql } from 'kysely'
import { eventually, testDatabase } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'

async function sleeping (db: TestDatabase): Promise<number> {
  const { rows } = await db.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
    [db.name]
  )
  return rows[0].n
}

/** A POST on its own connection (no keep-alive, so close() need not wait for an idle socket). */
async function post (port: number): Promise<{ status: number, body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/', agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body }) })
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('close() while a handler\'s last query runs: the client must not get a 2xx for the rolled-back row', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const app = await db.app({ closeTimeoutMillis: 5000 })
  app.post('/', async (request) => {
    await request.db.insertInto('items').values({ name: 'lost' }).execute()
    await sql`SELECT pg_sleep(0.5)`.execute(request.db)
    return { ok: true }
  })
  const response = app.inject({ method: 'POST', url: '/' })
  await eventually(() => sleeping(db), (n) => n === 1)
  await app.close()
  const res = await response
  t.same((await db.query('SELECT name FROM items')).rows, [], 'the row was rolled back by close()')
  t.equal(app.db.stats().commits, 0, 'nothing committed')
  t.ok(res.statusCode >= 400, `the client was told ${res.statusCode} ${res.body}`)
})

t.test('close() while fastify.db.transaction()\'s fn runs its last query: the promise must not resolve as if committed', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const app = await db.app({ closeTimeoutMillis: 5000 })
  const result = app.db.transaction(async (trx) => {
    await trx.insertInto('items').values({ name: 'lost' }).execute()
    await sql`SELECT pg_sleep(0.5)`.execute(trx)
    return 'committed?'
  }).then((value) => ({ value }), (error: Error & { code?: string }) => ({ error: error.code ?? error.message }))
  await eventually(() => sleeping(db), (n) => n === 1)
  await app.close()
  const outcome = await result
  t.same((await db.query('SELECT name FROM items')).rows, [], 'the row was rolled back by close()')
  t.ok('error' in outcome, `transaction() settled with ${JSON.stringify(outcome)}`)
})

t.test('real server: close() destroys the connection of a handler busy outside the database; its commit must not answer 2xx', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const app = await db.app({ closeTimeoutMillis: 200 })
  let inserted!: () => void
  const insertedPromise = new Promise<void>((resolve) => { inserted = resolve })
  app.post('/', async (request) => {
    await request.db.insertInto('items').values({ name: 'lost' }).execute()
    inserted()
    await new Promise((resolve) => setTimeout(resolve, 800)) // e.g. a call to another service
    return { ok: true }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const response = post(port)
  await insertedPromise
  const closed = app.close()
  const res = await response
  await closed
  t.same((await db.query('SELECT name FROM items')).rows, [], 'the row is absent: close() destroyed its connection')
  t.equal(app.db.stats().leaks, 1)
  t.ok(res.status >= 400, `the client was told ${res.status} ${res.body}`)
})
