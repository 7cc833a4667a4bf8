// request.afterCommit and request.afterRollback: side effects only once the transaction's fate is
// known. afterCommit runs after COMMIT and before the response, never after a rollback. Each path
// that ends without a commit: commit-hooks-rollback.test.ts.
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { both, effects, setup } from './helpers/hooks.js'
import { capturedLogs, itemNames } from './helpers/util.js'

// Each test makes a database and a pool; on a loaded machine the file outlasts tap's default 30 s.
t.setTimeout(120_000)

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
