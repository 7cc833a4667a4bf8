// request.afterCommit and request.afterRollback: side effects only once the transaction's fate is
// known. afterCommit runs after COMMIT and before the response, never after a rollback;
// afterRollback runs on every path that ends without a commit; neither when nobody knows.
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { Test } from 'tap'
import Fastify from 'fastify'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { sql } from 'kysely'
import dbSession from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'
import { capturedLogs, deferred, itemNames } from './helpers/util.js'
import { startProxy } from './helpers/tcp-proxy.js'

async function setup (t: Test, options = {}, fastifyOptions = {}): Promise<{ db: TestDatabase, app: FastifyInstance }> {
  const db = await testDatabase(t)
  await db.query(`CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL,
    CONSTRAINT unique_name UNIQUE (name) DEFERRABLE INITIALLY DEFERRED)`)
  // What callbacks did, written on the helper's own connection: outside every transaction of the app.
  await db.query('CREATE TABLE effects (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app(options, fastifyOptions)
  return { db, app }
}

async function effects (db: TestDatabase): Promise<string[]> {
  const { rows } = await db.query('SELECT name FROM effects ORDER BY id')
  return rows.map((row: { name: string }) => row.name)
}

/** Registers an afterCommit and an afterRollback that each note, in `ran`, that they ran. */
function both (request: FastifyRequest, ran: string[]): void {
  request.afterCommit(() => { ran.push('afterCommit') })
  request.afterRollback(() => { ran.push('afterRollback') })
}

t.test('afterCommit: after COMMIT, in registration order, each awaited, before the client gets the response', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  app.post('/items', async (request, reply) => {
    await request.db.insertInto('items').values({ name: 'apple' }).execute()
    request.afterCommit(async () => {
      // Another connection already sees the row: COMMIT is done.
      ran.push(`first sees ${(await itemNames(db)).join(',')}`)
      await sleep(100)
      await db.query("INSERT INTO effects (name) VALUES ('first')")
    })
    request.afterCommit(() => { ran.push('second') })
    request.afterCommit(async () => {
      await sleep(50)
      await db.query("INSERT INTO effects (name) VALUES ('third')")
    })
    request.afterRollback(() => { ran.push('afterRollback') })
    return reply.code(201).send({ ok: true })
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const response = await fetch(`http://127.0.0.1:${port}/items`, { method: 'POST' })
  // Read before anything else: what the client can see the moment it has its answer.
  const seen = await effects(db)
  t.equal(response.status, 201)
  t.same(seen, ['first', 'third'], 'both async callbacks were done before the response arrived, in order')
  t.same(ran, ['first sees apple', 'second'], 'in registration order, after COMMIT; afterRollback never')
  t.same(await itemNames(db), ['apple'])
  t.equal(app.db.stats().callbackErrors, 0)
})

t.test('a callback that throws or rejects is logged with the request id and route, counted, and the others run; the response stays 2xx', async (t) => {
  const logs = capturedLogs()
  const { db, app } = await setup(t, {}, logs.options)
  const ran: string[] = []
  let requestId = ''
  app.post('/items', async (request) => {
    requestId = request.id
    await request.db.insertInto('items').values({ name: 'kept' }).execute()
    request.afterCommit(() => { throw new Error('sync failure') })
    request.afterCommit(() => { ran.push('between') })
    request.afterCommit(async () => { throw new Error('async failure') })
    request.afterCommit(() => { ran.push('last') })
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/items' })
  t.equal(res.statusCode, 200, 'the commit stands')
  t.same(res.json(), { ok: true })
  t.same(ran, ['between', 'last'])
  t.same(await itemNames(db), ['kept'])
  t.equal(app.db.stats().callbackErrors, 2)
  t.match(app.db.metrics(), /^fastify_db_session_callback_errors_total\{pool="default"\} 2$/m)
  const failures = logs.lines.filter((line) => line.msg.includes('an afterCommit callback failed'))
  t.equal(failures.length, 2)
  for (const line of failures) {
    t.equal(line.level, 50)
    t.equal(line.reqId, requestId)
    t.equal(line.route, 'POST /items')
  }
  t.match((failures[0] as unknown as { err: { message: string } }).err.message, 'sync failure')
  t.match((failures[1] as unknown as { err: { message: string } }).err.message, 'async failure')
})

t.test('a failing afterRollback callback is logged and counted too; the error response is unchanged', async (t) => {
  const logs = capturedLogs()
  const { app } = await setup(t, {}, logs.options)
  const ran: string[] = []
  app.post('/items', async (request) => {
    await request.db.insertInto('items').values({ name: 'lost' }).execute()
    request.afterRollback(async () => { throw new Error('cleanup failed') })
    request.afterRollback(() => { ran.push('next cleanup') })
    throw Object.assign(new Error('handler failed'), { statusCode: 418 })
  })
  const res = await app.inject({ method: 'POST', url: '/items' })
  t.equal(res.statusCode, 418)
  t.same(ran, ['next cleanup'])
  t.equal(app.db.stats().callbackErrors, 1)
  t.ok(logs.lines.some((line) => line.level === 50 && line.msg.includes('an afterRollback callback failed') && line.route === 'POST /items'))
})

t.test('a request that never opened a transaction runs afterCommit where it would have committed, afterRollback where not', async (t) => {
  const { app } = await setup(t)
  const ran: string[] = []
  app.get('/ok', async (request) => { both(request, ran); return { ok: true } })
  app.get('/bad', async (request, reply) => { both(request, ran); return reply.code(400).send({ ok: false }) })
  t.equal((await app.inject('/ok')).statusCode, 200)
  t.same(ran.splice(0), ['afterCommit'])
  t.equal((await app.inject('/bad')).statusCode, 400)
  t.same(ran.splice(0), ['afterRollback'])
  t.equal(app.db.stats().acquires, 0, 'no connection was ever taken')
})

t.test('commitWhen decides for a never-opened request too', async (t) => {
  const { app } = await setup(t, { commitWhen: (_request: unknown, reply: { getHeader: (name: string) => unknown }) => reply.getHeader('x-no-commit') === undefined })
  const ran: string[] = []
  app.get('/vetoed', async (request, reply) => { both(request, ran); return reply.header('x-no-commit', '1').send({ ok: true }) })
  t.equal((await app.inject('/vetoed')).statusCode, 200)
  t.same(ran, ['afterRollback'])
})

// Every path that ends a request's transaction without a commit: afterCommit's effect absent, afterRollback's present.

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

t.test('fastify.db.afterCommit(request, fn) and afterRollback(request, fn): the same, for this registration\'s unit of work', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  app.post('/items/:name', async (request, reply) => {
    const { name } = request.params as { name: string }
    await request.db.insertInto('items').values({ name }).execute()
    app.db.afterCommit(request, () => { ran.push(`committed ${name}`) })
    app.db.afterRollback(request, () => { ran.push(`rolled back ${name}`) })
    return reply.code(name === 'bad' ? 400 : 200).send()
  })
  t.equal((await app.inject({ method: 'POST', url: '/items/good' })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: '/items/bad' })).statusCode, 400)
  t.same(ran, ['committed good', 'rolled back bad'])
  t.same(await itemNames(db), ['good'])
})

t.test('registering after the response, or something that is not a function, fails at once', async (t) => {
  const { app } = await setup(t)
  let late: { code?: string } | undefined
  app.addHook('onResponse', async (request) => {
    try {
      request.afterCommit(() => {})
    } catch (error) {
      late = error as { code?: string }
    }
  })
  app.get('/', async (request) => {
    request.afterRollback(() => {})
    return { ok: true }
  })
  app.get('/wrong', async (request) => {
    request.afterCommit('send mail' as unknown as () => void)
  })
  t.equal((await app.inject('/')).statusCode, 200)
  t.equal(late?.code, 'FST_DB_SESSION_TRANSACTION_FINISHED')
  const wrong = await app.inject('/wrong')
  t.equal(wrong.json().code, 'FST_DB_SESSION_INVALID_OPTION')
  t.match(wrong.json().message, "afterCommit expects a function; instead got 'send mail'")
})
