// Two registrations in one app (the `decorator` option): request.db on one database and
// request.analytics on another, two pools and two units of work in every request, each finished
// on every path a request can end by. They are independent transactions: no two-phase commit.
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import type { Transaction } from 'kysely'
import { sql } from 'kysely'
import { eventually } from './helpers/database.js'
import { deferred } from './helpers/util.js'
import { names, nothingLeftOpen, outcomes, settled, setup, writeBoth } from './helpers/two-databases.js'

// Each test makes two databases, which takes a while on a loaded machine.
t.setTimeout(120_000)

const bothCommitted = { db: { commits: 1, rollbacks: 0, active: 0 }, analytics: { commits: 1, rollbacks: 0, active: 0 } }
const bothRolledBack = { db: { commits: 0, rollbacks: 1, active: 0 }, analytics: { commits: 0, rollbacks: 1, active: 0 } }

t.test('one request writes to both databases: two pools, two transactions, both commit before the response', async (t) => {
  const s = await setup(t)
  const { app, main, analytics } = s
  const seen: Record<string, unknown> = {}
  app.post('/both', async (request, reply) => {
    await writeBoth(request, 'signup')
    // Two transactions on two connections, each on its own database.
    const [mainSide, analyticsSide] = await Promise.all([
      sql<{ db: string, pid: number }>`select current_database() as db, pg_backend_pid() as pid`.execute(request.db),
      sql<{ db: string, pid: number }>`select current_database() as db, pg_backend_pid() as pid`.execute(request.analytics)
    ])
    seen.main = mainSide.rows[0]
    seen.analytics = analyticsSide.rows[0]
    seen.openOnMain = await main.idleInTransaction()
    seen.openOnAnalytics = await analytics.idleInTransaction()
    seen.visibleBeforeCommit = (await names(analytics, 'events')).length
    return reply.code(201).send({ ok: true })
  })
  const res = await app.inject({ method: 'POST', url: '/both' })
  t.equal(res.statusCode, 201)
  t.match(seen, { main: { db: main.name }, analytics: { db: analytics.name }, openOnMain: 1, openOnAnalytics: 1, visibleBeforeCommit: 0 })
  t.same(await names(main, 'items'), ['signup'])
  t.same(await names(analytics, 'events'), ['signup'])
  t.same(outcomes(app), bothCommitted)
  t.not(app.db.pool, app.analytics.pool, 'each registration has its own pool')
  t.equal(app.db.stats().acquires, 1)
  t.equal(app.analytics.stats().acquires, 1)
  await nothingLeftOpen(t, s)
})

t.test('a throw rolls back both', async (t) => {
  const s = await setup(t)
  s.app.post('/both', async (request) => {
    await writeBoth(request, 'lost')
    throw new Error('boom')
  })
  const res = await s.app.inject({ method: 'POST', url: '/both' })
  t.equal(res.statusCode, 500)
  t.same(await settled(s.app, bothRolledBack), bothRolledBack)
  t.same(await names(s.main, 'items'), [])
  t.same(await names(s.analytics, 'events'), [])
  await nothingLeftOpen(t, s)
})

t.test('an error status sent without a throw rolls back both', async (t) => {
  const s = await setup(t)
  s.app.post('/both', async (request, reply) => {
    await writeBoth(request, 'refused')
    return reply.code(422).send({ message: 'no' })
  })
  const res = await s.app.inject({ method: 'POST', url: '/both' })
  t.equal(res.statusCode, 422)
  t.same(outcomes(s.app), bothRolledBack)
  t.same(await names(s.main, 'items'), [])
  t.same(await names(s.analytics, 'events'), [])
  await nothingLeftOpen(t, s)
})

t.test('a client hang-up rolls back both at once, and the handler\'s later queries on either are refused', async (t) => {
  const s = await setup(t)
  const { app } = s
  const written = deferred()
  const go = deferred()
  const later = deferred<string[]>()
  app.post('/both', async (request) => {
    await writeBoth(request, 'abandoned')
    written.resolve()
    await go.promise
    const codes = []
    for (const trx of [request.db, request.analytics] as Array<Transaction<any>>) {
      codes.push(await sql`select 1`.execute(trx).then(() => 'ran', (error) => error.code))
    }
    later.resolve(codes)
    return { ok: true }
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo
  const socket = connect({ port, host: '127.0.0.1' })
  socket.on('error', () => {})
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.write('POST /both HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n')
  await written.promise
  socket.destroy()
  // Rolled back while the handler still waits: the close, not the handler's return, ends both.
  t.same(await settled(app, bothRolledBack), bothRolledBack)
  t.equal(app.db.stats().aborts, 1)
  t.equal(app.analytics.stats().aborts, 1)
  await nothingLeftOpen(t, s)
  go.resolve()
  t.same(await later.promise, ['FST_DB_SESSION_TRANSACTION_FINISHED', 'FST_DB_SESSION_TRANSACTION_FINISHED'])
  t.same(await names(s.main, 'items'), [])
  t.same(await names(s.analytics, 'events'), [])
})

t.test('a COMMIT that fails on one is the response; the other, an independent transaction, commits or rolls back by its turn', async (t) => {
  t.test('the first registered fails at COMMIT: the second has not committed yet and rolls back', async (t) => {
    const s = await setup(t)
    s.app.post('/both', async (request) => {
      await writeBoth(request, 'first-fails')
      await request.db.insertInto('codes').values([{ code: 1 }, { code: 1 }]).execute() // fails at COMMIT
      return { ok: true }
    })
    const res = await s.app.inject({ method: 'POST', url: '/both' })
    t.equal(res.statusCode, 500)
    t.equal(res.json().code, 'FST_DB_SESSION_COMMIT_FAILED')
    t.same(await names(s.main, 'items'), [])
    t.same(await names(s.analytics, 'events'), [], 'the other database\'s work rolled back with the failed response')
    t.same(outcomes(s.app), bothRolledBack)
    t.equal(s.app.db.stats().commitFailures, 1)
    t.equal(s.app.analytics.stats().commitFailures, 0)
    await nothingLeftOpen(t, s)
  })

  t.test('the second registered fails at COMMIT: the first committed already, and stays committed (no two-phase commit)', async (t) => {
    const s = await setup(t)
    s.app.post('/both', async (request) => {
      await writeBoth(request, 'second-fails')
      await request.analytics.insertInto('codes').values([{ code: 1 }, { code: 1 }]).execute() // fails at COMMIT
      return { ok: true }
    })
    const res = await s.app.inject({ method: 'POST', url: '/both' })
    t.equal(res.statusCode, 500)
    t.equal(res.json().code, 'FST_DB_SESSION_COMMIT_FAILED', 'the failed COMMIT is the response, never a 200')
    t.same(await names(s.main, 'items'), ['second-fails'], 'the first database committed before the second COMMIT was sent')
    t.same(await names(s.analytics, 'events'), [])
    t.same(outcomes(s.app), { db: { commits: 1, rollbacks: 0, active: 0 }, analytics: { commits: 0, rollbacks: 1, active: 0 } })
    t.equal(s.app.analytics.stats().commitFailures, 1)
    await nothingLeftOpen(t, s)
  })
})

t.test('a handler timeout rolls back both; the late handler can commit neither', async (t) => {
  const s = await setup(t)
  const go = deferred()
  const later = deferred<string[]>()
  s.app.post('/both', { handlerTimeout: 1000 }, async (request) => {
    await writeBoth(request, 'too-slow')
    await go.promise
    const codes = []
    for (const trx of [request.db, request.analytics] as Array<Transaction<any>>) {
      codes.push(await sql`select 1`.execute(trx).then(() => 'ran', (error) => error.code))
    }
    later.resolve(codes)
    return { ok: true }
  })
  const res = await s.app.inject({ method: 'POST', url: '/both' })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_ERR_HANDLER_TIMEOUT')
  t.same(await settled(s.app, bothRolledBack), bothRolledBack)
  await nothingLeftOpen(t, s)
  go.resolve()
  t.same(await later.promise, ['FST_DB_SESSION_TRANSACTION_FINISHED', 'FST_DB_SESSION_TRANSACTION_FINISHED'])
  t.same(await names(s.main, 'items'), [])
  t.same(await names(s.analytics, 'events'), [])
})

t.test('a hijacked reply: both commit after a 200 the handler wrote, both roll back after a 500', async (t) => {
  const s = await setup(t)
  s.app.post('/hijack/:status', async (request, reply) => {
    const status = Number((request.params as { status: string }).status)
    reply.hijack()
    await writeBoth(request, `hijacked-${status}`)
    reply.raw.writeHead(status)
    reply.raw.end()
  })
  t.equal((await s.app.inject({ method: 'POST', url: '/hijack/200' })).statusCode, 200)
  t.same(await settled(s.app, bothCommitted), bothCommitted)
  t.equal((await s.app.inject({ method: 'POST', url: '/hijack/500' })).statusCode, 500)
  const expected = { db: { commits: 1, rollbacks: 1, active: 0 }, analytics: { commits: 1, rollbacks: 1, active: 0 } }
  t.same(await settled(s.app, expected), expected)
  t.same(await names(s.main, 'items'), ['hijacked-200'])
  t.same(await names(s.analytics, 'events'), ['hijacked-200'])
  await nothingLeftOpen(t, s)
})

t.test('fastify.close() during a request inside both transactions rolls back both and closes both pools', async (t) => {
  const s = await setup(t, {}, { closeTimeoutMillis: 300 })
  const written = deferred()
  s.app.post('/stuck', async (request) => {
    await writeBoth(request, 'stuck')
    written.resolve()
    await new Promise(() => {}) // never returns
  })
  s.app.inject({ method: 'POST', url: '/stuck' }).catch(() => {})
  await written.promise
  t.equal(await s.main.idleInTransaction(), 1)
  t.equal(await s.analytics.idleInTransaction(), 1)
  await s.app.close()
  t.same(outcomes(s.app), bothRolledBack)
  t.same(await names(s.main, 'items'), [])
  t.same(await names(s.analytics, 'events'), [])
  t.equal(await eventually(() => s.main.connections(), (n) => n === 0), 0, 'no connection left on the main database')
  t.equal(await eventually(() => s.analytics.connections(), (n) => n === 0), 0, 'nor on the analytics database')
  await t.rejects(s.app.analytics.transaction(async (trx) => trx.insertInto('events').values({ name: 'after' }).execute()), { code: 'FST_DB_SESSION_CLOSING' })
})
