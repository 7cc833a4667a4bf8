// What a retrying route reruns, and when it stops. The conflict is real: at repeatable read, the
// handler reads a counter, another connection updates it and commits, and the handler's own
// update then fails with 40001 ("could not serialize access due to concurrent update"); a rerun
// with no concurrent update succeeds. Each test's handler decides, per attempt, whether the
// other connection gets in first.
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { sql } from 'kysely'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { eventually, testDatabase } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'
import { capturedLogs, deferred, watchUncaught } from './helpers/util.js'

// Several tests wait through a real backoff, a handler timeout or a pg_sleep: on a loaded machine the
// file takes longer than tap's default 30 s.
t.setTimeout(120_000)

const debugLogs = () => capturedLogs('debug')

const RETRY_MESSAGE = /running the handler again/
const STOP_MESSAGE = /not retrying the request/

async function setup (t: Parameters<typeof testDatabase>[0], options: Record<string, unknown> = {}, fastifyOptions = {}) {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)')
  await db.query('INSERT INTO counters VALUES (1, 0)')
  const app = await db.app({ isolationLevel: 'repeatable read', ...options }, fastifyOptions)
  let runs = 0
  const attempts = new WeakMap<FastifyRequest, number>()
  /**
   * One run of a handler's work: reads the counter, lets another connection add 100 first when
   * `conflict` says so for this attempt of the request, then adds 1. Resolves to the attempt number.
   */
  async function bump (request: FastifyRequest, conflict: (attempt: number) => boolean = (attempt) => attempt === 1): Promise<number> {
    runs++
    const attempt = (attempts.get(request) ?? 0) + 1
    attempts.set(request, attempt)
    const { n } = await request.db.selectFrom('counters' as never).select('n' as never).where('id' as never, '=', 1 as never)
      .executeTakeFirstOrThrow() as { n: number }
    if (conflict(attempt)) await db.query('UPDATE counters SET n = n + 100 WHERE id = 1')
    await request.db.updateTable('counters' as never).set({ n: n + 1 } as never).where('id' as never, '=', 1 as never).execute()
    return attempt
  }
  return { db, app, bump, runs: () => runs }
}

async function listen (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
}

async function counter (db: TestDatabase): Promise<number> {
  return (await db.query('SELECT n FROM counters WHERE id = 1')).rows[0].n
}

t.test('a serialization failure in a query is retried: the rerun reads the other update and adds to it', async (t) => {
  const { db, app, bump, runs } = await setup(t, { retries: 3 })
  app.post('/bump', async (request) => ({ attempt: await bump(request) }))
  const res = await app.inject({ method: 'POST', url: '/bump' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { attempt: 2 })
  t.equal(runs(), 2)
  t.equal(await counter(db), 101, 'the other update (100), then this request\'s (1), as in a serial order')
  t.equal(app.db.stats().retries, 1)
})

t.test('retries run out: the last attempt\'s 409 answers', async (t) => {
  const { db, app, bump, runs } = await setup(t, { retries: 2, retryDelayMillis: 0 })
  app.post('/bump', async (request) => ({ attempt: await bump(request, () => true) }))
  const res = await app.inject({ method: 'POST', url: '/bump' })
  t.equal(res.statusCode, 409)
  t.equal(res.json().code, 'FST_DB_SESSION_SERIALIZATION_FAILURE')
  t.equal(runs(), 3, 'one attempt and two retries')
  t.equal(app.db.stats().retries, 2)
  t.equal(await counter(db), 300, 'only the other connection\'s updates are there')
})

t.test('decided on the unit of work\'s own record, not on what the handler does with the error', async (t) => {
  const { db, app, bump, runs } = await setup(t, { retries: 3 })
  // Catches the failure and answers 409 itself.
  app.post('/own-409', async (request, reply) => {
    try {
      return { attempt: await bump(request) }
    } catch {
      return reply.code(409).send({ mine: true })
    }
  })
  // Wraps it in an error of its own, without a code.
  app.post('/wrapped', async (request) => {
    try {
      return { attempt: await bump(request) }
    } catch (error) {
      throw new Error('could not book', { cause: error })
    }
  })
  // Swallows it and answers 200: PostgreSQL then answers COMMIT with ROLLBACK.
  app.post('/swallowed', async (request) => {
    try {
      return { attempt: await bump(request) }
    } catch {
      return { swallowed: true }
    }
  })
  // Returns the error as its answer.
  app.post('/returned', async (request) => {
    try {
      return { attempt: await bump(request) }
    } catch (error) {
      return error as Error
    }
  })
  let expected = 0
  for (const url of ['/own-409', '/wrapped', '/swallowed', '/returned']) {
    const res = await app.inject({ method: 'POST', url })
    t.equal(res.statusCode, 200, `${url}: retried, and the rerun succeeded`)
    t.same(res.json(), { attempt: 2 }, `${url}: the client saw the rerun's answer`)
    expected += 101
    t.equal(await counter(db), expected, `${url}: the other update and the rerun's are there`)
  }
  t.equal(runs(), 8)
  t.equal(app.db.stats().retries, 4)
})

t.test('reply.send() from the handler: a failed COMMIT is retried, and the client sees only the last attempt\'s status and headers', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE slots (position int NOT NULL)')
  const app = await db.app({ isolationLevel: 'serializable', retries: 3 })
  app.addHook('onRequest', async (_request, reply) => { reply.header('x-before', 'kept') })
  let arrived = 0
  const bothRead = deferred()
  const runs = new Map<string, number>()
  app.post('/slots/:caller', async (request: FastifyRequest<{ Params: { caller: string } }>, reply: FastifyReply) => {
    const attempt = (runs.get(request.params.caller) ?? 0) + 1
    runs.set(request.params.caller, attempt)
    const { taken } = await request.db.selectFrom('slots' as never).select((eb) => eb.fn.countAll<string>().as('taken')).executeTakeFirstOrThrow()
    if (attempt === 1) {
      if (++arrived === 2) bothRead.resolve()
      await bothRead.promise
      reply.header('x-first-attempt', 'yes').header('x-before', 'changed')
    }
    await request.db.insertInto('slots' as never).values({ position: Number(taken) + 1 } as never).execute()
    // The COMMIT comes after this send, and may fail (write skew): then the handler runs again.
    return reply.code(attempt === 1 ? 201 : 202).header('x-attempt', String(attempt)).send({ position: Number(taken) + 1 })
  })
  const responses = await Promise.all(['a', 'b'].map((caller) => app.inject({ method: 'POST', url: `/slots/${caller}` })))
  const winner = responses.find((res) => res.headers['x-attempt'] === '1')
  const loser = responses.find((res) => res.headers['x-attempt'] === '2')
  t.equal(winner?.statusCode, 201)
  t.equal(loser?.statusCode, 202, 'the rerun\'s status, not the first attempt\'s')
  t.equal(loser?.headers['x-first-attempt'], undefined, 'a header only the first attempt set is gone')
  t.equal(loser?.headers['x-before'], 'kept', 'a header set before the handler is as it was then')
  t.same((await db.query('SELECT position FROM slots ORDER BY position')).rows.map((row) => row.position), [1, 2])
  t.equal(app.db.stats().retries, 1)
})

t.test('a handler that is not async and sends later (a callback), with an error or an answer', async (t) => {
  const { db, app, bump, runs } = await setup(t, { retries: 3 })
  app.post('/callback', function (request, reply) {
    bump(request).then((attempt) => reply.send({ attempt }), (error) => reply.send(error))
  })
  // Handlers that are not async and answer at once, on a retrying route that does not use the database.
  app.get('/sync', () => 'pong')
  app.get('/sync-throws', () => { throw new Error('at once') })
  const res = await app.inject({ method: 'POST', url: '/callback' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { attempt: 2 })
  t.equal(runs(), 2)
  t.equal(await counter(db), 101)
  t.equal((await app.inject('/sync')).body, 'pong')
  const thrown = await app.inject('/sync-throws')
  t.equal(thrown.statusCode, 500)
  t.equal(thrown.json().message, 'at once')
})

t.test('a hijacked reply is not retried: the handler answers as it did, once', async (t) => {
  const { db, app, bump, runs } = await setup(t, { retries: 3 })
  app.post('/hijacked', async (request, reply) => {
    reply.hijack()
    try {
      await bump(request)
      reply.raw.writeHead(200)
      reply.raw.end('ok')
    } catch {
      // The response is started, and ends after the handler returned.
      reply.raw.writeHead(409)
      setTimeout(() => reply.raw.end('conflict'), 50)
    }
  })
  // Over HTTP: the socket stays open after the raw response ends, as it does in production.
  const res = await fetch(`${await listen(app)}/hijacked`, { method: 'POST' })
  t.equal(res.status, 409)
  t.equal(await res.text(), 'conflict')
  t.equal(runs(), 1, 'the handler ran once')
  const stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 1 && s.active === 0)
  t.equal(stats.retries, 0)
  t.equal(stats.rollbacks, 1)
  t.equal(await counter(db), 100)
})

t.test('a response already streamed (written to the raw response) is not retried', async (t) => {
  const { db, app, bump, runs } = await setup(t, { retries: 3 }, { logger: { level: 'silent' } })
  app.post('/streamed', async (request, reply) => {
    reply.raw.writeHead(200, { 'content-type': 'text/plain' })
    reply.raw.write('partial ')
    try {
      await bump(request)
      reply.raw.end('ok')
    } catch {
      setTimeout(() => reply.raw.end('end'), 50)
    }
  })
  const res = await fetch(`${await listen(app)}/streamed`, { method: 'POST' })
  t.equal(await res.text(), 'partial end')
  t.equal(runs(), 1, 'the handler ran once')
  const stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 1 && s.active === 0)
  t.equal(stats.retries, 0)
  t.equal(await counter(db), 100)
})

t.test('a hook that used request.db before the handler: not retried, as rerunning the handler alone would lose its work', async (t) => {
  const { db, app, bump, runs } = await setup(t, { retries: 3 })
  app.post('/hooked', {
    preHandler: async (request) => { await request.db.selectFrom('counters' as never).select('n' as never).execute() }
  }, async (request) => ({ attempt: await bump(request) }))
  const res = await app.inject({ method: 'POST', url: '/hooked' })
  t.equal(res.statusCode, 409)
  t.equal(runs(), 1)
  t.equal(app.db.stats().retries, 0)
  t.equal(await counter(db), 100)
})

t.test('per route: config.db.retries overrides the plugin\'s; config.db false has none', async (t) => {
  const { db, app, bump, runs } = await setup(t, { retries: 0 })
  app.post('/route-retries', { config: { db: { retries: 2 } } }, async (request) => ({ attempt: await bump(request) }))
  const res = await app.inject({ method: 'POST', url: '/route-retries' })
  t.equal(res.statusCode, 200)
  t.equal(runs(), 2)
  t.equal(await counter(db), 101)

  const other = await setup(t, { retries: 3 })
  other.app.post('/no-retries', { config: { db: { retries: 0 } } }, async (request) => ({ attempt: await other.bump(request) }))
  other.app.post('/off', { config: { db: false } }, async (request) => request.db)
  t.equal((await other.app.inject({ method: 'POST', url: '/no-retries' })).statusCode, 409)
  t.equal(other.runs(), 1)
  t.equal((await other.app.inject({ method: 'POST', url: '/off' })).json().code, 'FST_DB_SESSION_DISABLED')
})

t.test('commitWhen that throws on a retrying route: rolled back, and its error answers', async (t) => {
  const { db, app } = await setup(t, { retries: 3, commitWhen: () => { throw new Error('no decision') } }, { logger: { level: 'silent' } })
  app.post('/decide', async (request) => {
    await request.db.updateTable('counters' as never).set({ n: 7 } as never).execute()
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/decide' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().message, 'no decision')
  t.equal(await counter(db), 0)
  t.equal(app.db.stats().rollbacks, 1)
})

t.test('a handler that fails after its reply was taken: logged, the answer stands', async (t) => {
  const logs = debugLogs()
  const { db, app } = await setup(t, { retries: 3 }, logs.options)
  const failLater = deferred()
  app.post('/late', async (request, reply) => {
    await request.db.updateTable('counters' as never).set({ n: 5 } as never).execute()
    reply.send({ ok: true })
    await failLater.promise
    throw new Error('after the send')
  })
  const res = await app.inject({ method: 'POST', url: '/late' })
  t.equal(res.statusCode, 200)
  t.equal(await counter(db), 5)
  failLater.resolve()
  const lines = await eventually(async () => logs.lines.filter((line) => /failed after its reply was taken/.test(line.msg)), (found) => found.length > 0)
  t.match(lines, [{ level: 50, err: { message: 'after the send' } }])
})

t.test('the handler timeout during the backoff: 503, and the handler does not run again', async (t) => {
  const logs = debugLogs()
  const { db, app, bump, runs } = await setup(t, { retries: 3, retryDelayMillis: 60000 }, logs.options)
  app.get('/slow-retry', { handlerTimeout: 300 }, async (request) => ({ attempt: await bump(request) }))
  const res = await app.inject({ method: 'GET', url: '/slow-retry' })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_ERR_HANDLER_TIMEOUT')
  // The 503's end woke the backoff, which then stopped.
  const stopped = await eventually(async () => logs.lines.filter((line) => STOP_MESSAGE.test(line.msg)), (found) => found.length > 0)
  t.match(stopped, [{ reason: /timed out/ }])
  t.equal(runs(), 1)
  t.equal(app.db.stats().retries, 0)
  t.equal(await counter(db), 100)
  t.equal(await db.idleInTransaction(), 0)
})

t.test('the handler timeout while the 503 is still on its way when the backoff ends: the handler does not run again', async (t) => {
  const logs = debugLogs()
  const { db, app, bump, runs } = await setup(t, { retries: 3, retryDelayMillis: 3000 }, logs.options)
  const stopped = () => logs.lines.filter((line) => STOP_MESSAGE.test(line.msg))
  // Holds the timeout's 503 in onSend until the backoff (1.5 to 3 s) has ended and decided.
  app.addHook('onSend', async (_request, reply) => {
    if (reply.statusCode === 503) await eventually(async () => stopped(), (found) => found.length > 0, 10000)
  })
  app.get('/slow-retry', { handlerTimeout: 1000 }, async (request) => ({ attempt: await bump(request) }))
  const res = await app.inject({ method: 'GET', url: '/slow-retry' })
  t.equal(res.statusCode, 503)
  t.match(stopped(), [{ reason: /timed out/ }])
  t.equal(runs(), 1, 'not run again while the 503 was on its way')
  t.equal(app.db.stats().retries, 0)
  t.equal(await counter(db), 100)
})

t.test('the handler timeout during a rerun: the 503 goes at once, while the rerun\'s query still runs; rolled back', async (t) => {
  const { db, app, bump, runs } = await setup(t, { retries: 3, retryDelayMillis: 0 })
  app.get('/stalling-rerun', { handlerTimeout: 300 }, async (request) => {
    const attempt = await bump(request)
    await request.db.selectNoFrom(sql<number>`pg_sleep(3)`.as('slept')).execute()
    return { attempt }
  })
  const res = await app.inject({ method: 'GET', url: '/stalling-rerun' })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_ERR_HANDLER_TIMEOUT')
  const sleeping = await db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query LIKE '%pg_sleep(3)%' AND pid <> pg_backend_pid()", [db.name])
  t.equal(sleeping.rows[0].n, 1, 'the 503 did not wait for the rerun\'s query')
  t.equal(runs(), 2, 'the rerun was running when the timeout fired')
  const stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 2 && s.active === 0, 10000)
  t.equal(stats.rollbacks, 2, 'both attempts rolled back')
  t.equal(stats.commits, 0)
  t.equal(await counter(db), 100)
})

t.test('a client that hangs up during the backoff: the handler does not run again', async (t) => {
  const logs = debugLogs()
  const uncaught = watchUncaught(t)
  const { db, app, bump, runs } = await setup(t, { retries: 3, retryDelayMillis: 60000 }, logs.options)
  app.post('/bump', async (request) => ({ attempt: await bump(request) }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const socket = connect({ port, host: '127.0.0.1' })
  socket.on('error', () => {})
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.write('POST /bump HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n')
  await eventually(async () => logs.lines.filter((line) => RETRY_MESSAGE.test(line.msg)), (found) => found.length > 0, 10000)
  socket.destroy()
  const stopped = await eventually(async () => logs.lines.filter((line) => STOP_MESSAGE.test(line.msg)), (found) => found.length > 0, 10000)
  t.match(stopped, [{ reason: 'the client went away' }], 'the backoff ended with the client, long before its 30 s')
  t.equal(runs(), 1)
  t.equal(app.db.stats().retries, 0)
  t.equal(await counter(db), 100)
  t.equal(await db.idleInTransaction(), 0)
  t.same(uncaught, [])
})

t.test('fastify.close() during the backoff: the last failure answers at once, nothing runs again', async (t) => {
  const logs = debugLogs()
  const { db, app, bump, runs } = await setup(t, { retries: 3, retryDelayMillis: 60000 }, logs.options)
  app.post('/bump', async (request) => ({ attempt: await bump(request) }))
  const answer = app.inject({ method: 'POST', url: '/bump' })
  await eventually(async () => logs.lines.filter((line) => RETRY_MESSAGE.test(line.msg)), (found) => found.length > 0, 10000)
  await app.close()
  const res = await answer
  t.equal(res.statusCode, 409)
  t.equal(res.json().code, 'FST_DB_SESSION_SERIALIZATION_FAILURE')
  t.match(logs.lines.filter((line) => STOP_MESSAGE.test(line.msg)), [{ reason: 'the server is closing' }])
  t.equal(runs(), 1)
  t.equal(app.db.stats().retries, 0)
  t.equal(await counter(db), 100)
})
