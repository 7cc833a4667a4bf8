// Every path that ends a request's transaction without a commit runs afterRollback and never
// afterCommit: a throw, an error status, a failed COMMIT, a hang-up, a handler timeout, a failed
// hijacked reply, fastify.close(), leakTimeoutMillis. An unknown outcome runs neither.
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import Fastify from 'fastify'
import { sql } from 'kysely'
import dbSession from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'
import { both, setup } from './helpers/hooks.js'
import { deferred, itemNames } from './helpers/util.js'
import { startProxy } from './helpers/tcp-proxy.js'

// Each test makes a database and a pool; on a loaded machine the file outlasts tap's default 30 s.
t.setTimeout(120_000)

t.test('rollback path: the handler throws', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  app.post('/items', async (request) => {
    both(request, ran)
    await request.db.insertInto('items').values({ name: 'thrown' }).execute()
    throw new Error('boom')
  })
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 500)
  t.same(ran, ['afterRollback'])
  t.same(await itemNames(db), [])
})

t.test('rollback path: an error status', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  app.post('/items', async (request, reply) => {
    both(request, ran)
    await request.db.insertInto('items').values({ name: 'refused' }).execute()
    return reply.code(422).send({ ok: false })
  })
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 422)
  t.same(ran, ['afterRollback'])
  t.same(await itemNames(db), [])
})

t.test('rollback path: a failed COMMIT (deferred constraint) runs afterRollback, not afterCommit', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  app.post('/items', async (request) => {
    both(request, ran)
    await request.db.insertInto('items').values([{ name: 'twin' }, { name: 'twin' }]).execute()
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/items' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_DB_SESSION_COMMIT_FAILED')
  t.same(ran, ['afterRollback'])
  t.same(await itemNames(db), [])
  t.equal(app.db.stats().commitFailures, 1)
})

t.test('rollback path: the client hangs up', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  const inserted = deferred()
  const go = deferred()
  const handled = deferred()
  app.post('/items', async (request) => {
    both(request, ran)
    await request.db.insertInto('items').values({ name: 'hung up' }).execute()
    inserted.resolve()
    await go.promise
    handled.resolve()
    return { ok: true }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const socket = connect({ port, host: '127.0.0.1' })
  socket.on('error', () => {})
  socket.write('POST /items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n')
  await inserted.promise
  socket.destroy()
  const stats = await eventually(async () => app.db.stats(), (s) => s.aborts === 1 && s.active === 0)
  t.equal(stats.aborts, 1)
  t.same(ran, ['afterRollback'], 'ran at the hang-up, while the handler still waits')
  go.resolve()
  await handled.promise
  await sleep(50)
  t.same(ran, ['afterRollback'], 'and nothing more when the handler returned')
  t.same(await itemNames(db), [])
})

t.test('rollback path: a handler timeout', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  const go = deferred()
  app.post('/items', { handlerTimeout: 100 }, async (request) => {
    both(request, ran) // first: registered before the timeout can end the work
    await request.db.insertInto('items').values({ name: 'timed out' }).execute()
    await go.promise
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/items' })
  t.equal(res.statusCode, 503)
  await eventually(async () => ran.length, (n) => n === 1)
  t.same(ran, ['afterRollback'])
  go.resolve()
  await sleep(50)
  t.same(ran, ['afterRollback'])
  t.same(await itemNames(db), [])
})

t.test('rollback path: a hijacked reply that failed', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  app.post('/items', async (request, reply) => {
    both(request, ran)
    await request.db.insertInto('items').values({ name: 'hijacked failure' }).execute()
    reply.hijack()
    reply.raw.writeHead(500)
    reply.raw.end('failed')
  })
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 500)
  await eventually(async () => ran.length, (n) => n === 1)
  t.same(ran, ['afterRollback'])
  t.same(await itemNames(db), [])
})

t.test('a hijacked reply that succeeded runs afterCommit once committed', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  app.post('/items', async (request, reply) => {
    both(request, ran)
    await request.db.insertInto('items').values({ name: 'hijacked' }).execute()
    reply.hijack()
    reply.raw.writeHead(200)
    reply.raw.end('ok')
  })
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 200)
  await eventually(async () => ran.length, (n) => n === 1)
  t.same(ran, ['afterCommit'])
  t.same(await itemNames(db), ['hijacked'])
})

t.test('rollback path: fastify.close() while the request runs', async (t) => {
  const { db, app } = await setup(t, { closeTimeoutMillis: 5000 })
  const ran: string[] = []
  const inserted = deferred()
  app.post('/items', async (request) => {
    both(request, ran)
    await request.db.insertInto('items').values({ name: 'closing' }).execute()
    inserted.resolve()
    await sql`SELECT pg_sleep(0.5)`.execute(request.db)
    return { ok: true }
  })
  const response = app.inject({ method: 'POST', url: '/items' })
  await inserted.promise
  await app.close()
  t.same(ran, ['afterRollback'], 'ran before close() returned')
  const res = await response
  t.ok(res.statusCode >= 500, `the client was told ${res.statusCode}`)
  t.same(ran, ['afterRollback'])
  t.same(await itemNames(db), [])
})

t.test('rollback path: leakTimeoutMillis', async (t) => {
  const { db, app } = await setup(t, { leakTimeoutMillis: 200 }, { logger: { level: 'silent' } })
  const ran: string[] = []
  app.post('/items', async (request) => {
    both(request, ran) // first: registered before the timeout can end the work
    await request.db.insertInto('items').values({ name: 'stuck' }).execute()
    await sleep(600)
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/items' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_DB_SESSION_HOLD_TIMEOUT')
  t.same(ran, ['afterRollback'])
  t.same(await itemNames(db), [])
})

t.test('an unknown outcome (connection lost during COMMIT) runs neither kind', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const proxy = await startProxy(t, db.url)
  const app = Fastify({ logger: { level: 'silent' } })
  t.teardown(() => app.close())
  await app.register(dbSession, { connectionString: proxy.urlFor(db.url) })
  const ran: string[] = []
  app.post('/items', async (request) => {
    both(request, ran)
    await request.db.insertInto('items').values({ name: 'maybe' }).execute()
    proxy.cutAfterClientSends = 'COMMIT'
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/items' })
  t.equal(res.json().code, 'FST_DB_SESSION_COMMIT_OUTCOME_UNKNOWN')
  await eventually(() => itemNames(db), (names) => names.length === 1)
  t.same(ran, [], 'it did commit, but the app cannot know: neither callback ran')
})
