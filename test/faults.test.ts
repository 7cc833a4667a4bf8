// Faults in the database underneath a running app: a backend killed inside a request's
// transaction, an idle pooled connection killed, and a ROLLBACK that cannot run.
import t from 'tap'
import Fastify from 'fastify'
import dbSession from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'
import { capturedLogs, deferred, watchUncaught } from './helpers/util.js'
import type { TestDatabase } from './helpers/database.js'

type Test = Parameters<Parameters<typeof t.test>[0]>[0]

/** Kills this database's backends in `state` from the helper's connection; returns how many. */
async function terminate (db: TestDatabase, state: string): Promise<number> {
  const { rows } = await db.query(
    'SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND state = $2',
    [db.name, state]
  )
  return rows.filter((row) => row.killed === true).length
}

async function itemNames (db: TestDatabase): Promise<string[]> {
  const { rows } = await db.query('SELECT name FROM items ORDER BY id')
  return rows.map((row) => row.name)
}

/**
 * An app whose POST /doomed inserts, tells the test, waits for the test to kill its backend,
 * then does `after`; and whose POST /items inserts and commits normally.
 */
async function doomedApp (t: Test, db: TestDatabase, options: object, after: (request: any) => Promise<unknown>) {
  const inserted = deferred()
  const proceed = deferred()
  const app = await db.app({}, options)
  app.post('/doomed', async (request) => {
    await request.db.insertInto('items').values({ name: 'doomed' }).execute()
    inserted.resolve()
    await proceed.promise
    await after(request)
    return { ok: true }
  })
  app.post('/items', async (request, reply) => {
    const row = await request.db.insertInto('items').values(request.body as { name: string }).returningAll().executeTakeFirstOrThrow()
    return reply.code(201).send(row)
  })
  return { app, inserted, proceed }
}

async function killInsideRequest (t: Test, db: TestDatabase, inserted: { promise: Promise<void> }): Promise<void> {
  await inserted.promise
  t.equal(await db.idleInTransaction(), 1, 'the request holds one backend idle in transaction')
  t.equal(await terminate(db, 'idle in transaction'), 1, 'its backend was terminated')
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0, 'the backend is gone')
}

async function nextRequestCommits (t: Test, db: TestDatabase, app: Awaited<ReturnType<typeof db.app>>, commitsBefore: number): Promise<void> {
  const next = await app.inject({ method: 'POST', url: '/items', payload: { name: 'after' } })
  t.equal(next.statusCode, 201, 'the next request succeeds')
  t.equal(next.json().name, 'after')
  t.same(await itemNames(db), ['after'], 'only the next request\'s row is in the table')
  t.equal(app.db.stats().commits, commitsBefore + 1, 'the next request committed')
  t.equal(app.db.stats().active, 0)
  t.equal(await db.connections(), 1, 'one live connection, opened afresh')
  t.equal(await db.idleInTransaction(), 0)
}

t.test('a backend killed mid-transaction: the next query fails the request, the connection is destroyed, the next request commits', async (t) => {
  const uncaught = watchUncaught(t)
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const logs = capturedLogs()
  const { app, inserted, proceed } = await doomedApp(t, db, logs.options, (request) => request.db.selectFrom('items').selectAll().execute())

  const response = app.inject({ method: 'POST', url: '/doomed' })
  await killInsideRequest(t, db, inserted)
  proceed.resolve()
  const res = await response

  t.equal(res.statusCode, 503, 'a lost connection is a 503: the client may retry')
  t.equal(res.json().code, 'FST_DB_SESSION_CONNECTION_LOST')
  t.match(res.json().message, /terminating connection due to administrator command/, 'naming why it was lost')
  t.same(await itemNames(db), [], 'the killed transaction\'s row is absent')
  const stats = app.db.stats()
  t.ok(stats.destroyed >= 1, 'the connection was destroyed, not returned')
  t.equal(stats.commits, 0)
  t.equal(stats.total, 0, 'the pool no longer holds the dead connection')
  t.equal(stats.active, 0)
  t.equal(logs.lines.filter((line) => line.level === 40 && line.msg.includes('checked-out database connection failed')).length, 1, 'the failure was logged as a warning, once')

  await nextRequestCommits(t, db, app, 0)
  t.same(uncaught, [], 'nothing went unhandled')
})

t.test('a backend killed mid-transaction: a handler that just returns gets a failed COMMIT (500), not a 200', async (t) => {
  const uncaught = watchUncaught(t)
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const { app, inserted, proceed } = await doomedApp(t, db, {}, async () => {})

  const response = app.inject({ method: 'POST', url: '/doomed' })
  await killInsideRequest(t, db, inserted)
  proceed.resolve()
  const res = await response

  t.equal(res.statusCode, 500, 'the client is not told its work succeeded')
  t.equal(res.json().code, 'FST_DB_SESSION_COMMIT_FAILED')
  t.match(res.json().message, /terminating connection due to administrator command/, 'the reason the connection broke, not pg\'s "not queryable"')
  t.same(await itemNames(db), [], 'the row is absent')
  const stats = app.db.stats()
  t.equal(stats.commits, 0)
  t.equal(stats.commitFailures, 1)
  t.ok(stats.destroyed >= 1, 'the connection was destroyed')
  t.equal(stats.total, 0)

  await nextRequestCommits(t, db, app, 0)
  t.same(uncaught, [], 'nothing went unhandled')
})

t.test('an idle pooled connection killed between requests: no crash, the pool drops it, the next request succeeds', async (t) => {
  const uncaught = watchUncaught(t)
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const logs = capturedLogs()
  const app = await db.app({}, logs.options)
  app.get('/count', async (request) => {
    const row = await request.db.selectFrom('items').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow()
    return { n: Number(row.n) }
  })
  app.post('/items', async (request, reply) => {
    const row = await request.db.insertInto('items').values(request.body as { name: string }).returningAll().executeTakeFirstOrThrow()
    return reply.code(201).send(row)
  })

  const first = await app.inject({ method: 'GET', url: '/count' })
  t.equal(first.statusCode, 200)
  t.same(first.json(), { n: 0 })
  t.equal(app.db.stats().idle, 1, 'the connection went back to the pool')
  t.equal(await db.connections(), 1)

  t.equal(await terminate(db, 'idle'), 1, 'the idle backend was terminated')
  t.equal(await eventually(async () => app.db.stats().total, (n) => n === 0), 0, 'the pool dropped the dead connection')
  t.equal(app.db.stats().destroyed, 0, 'nothing was checked out, so the plugin destroyed nothing')
  t.ok(logs.lines.some((line) => line.level === 40 && line.msg.includes('idle database connection failed')), 'the failure was logged as a warning')

  const next = await app.inject({ method: 'POST', url: '/items', payload: { name: 'after' } })
  t.equal(next.statusCode, 201, 'the next request succeeds on a new connection')
  t.same(await itemNames(db), ['after'])
  t.equal(app.db.stats().commits, 2)
  t.equal(app.db.stats().acquires, 2)
  t.equal(await db.connections(), 1)
  t.same(uncaught, [], 'nothing went unhandled')
})

t.test('a handler that fails after its backend was killed: rolled back (by PostgreSQL), the connection destroyed instead of returned', async (t) => {
  const uncaught = watchUncaught(t)
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const logs = capturedLogs()
  const { app, inserted, proceed } = await doomedApp(t, db, logs.options, async () => {
    throw new Error('the handler fails after its insert')
  })
  const brokenLogged = (): number => logs.lines.filter((line) => line.level === 40 && line.msg.includes('checked-out database connection failed')).length

  const response = app.inject({ method: 'POST', url: '/doomed' })
  await killInsideRequest(t, db, inserted)
  // The app hears of the kill before the handler fails (otherwise its ROLLBACK is what finds the
  // connection broken: connection-failures.test.ts covers that order).
  await eventually(async () => brokenLogged(), (n) => n > 0)
  proceed.resolve()
  const res = await response

  t.equal(res.statusCode, 500)
  t.equal(res.json().message, 'the handler fails after its insert', 'the handler\'s own error is the response')
  t.same(await itemNames(db), [], 'the row is absent')
  const stats = app.db.stats()
  t.equal(stats.rollbacks, 1, 'counted as a rollback')
  t.equal(stats.commits, 0)
  t.equal(stats.destroyed, 1, 'the connection was destroyed once')
  t.equal(stats.total, 0, 'and is out of the pool')
  t.equal(stats.active, 0)
  t.equal(brokenLogged(), 1, 'the broken connection was logged once')
  t.notOk(logs.lines.some((line) => line.msg.includes('ROLLBACK failed')), 'and no ROLLBACK was sent on it')

  // The pool is still usable: a fresh connection, and a plain rollback returns it rather than destroying it.
  const next = await app.inject({ method: 'POST', url: '/items', payload: { name: 'after' } })
  t.equal(next.statusCode, 201)
  t.same(await itemNames(db), ['after'])
  t.equal(app.db.stats().destroyed, 1, 'a healthy connection is not destroyed')
  t.equal(app.db.stats().idle, 1)
  t.same(uncaught, [], 'nothing went unhandled')
})

t.test('an owned pool\'s connections terminated as the app closes: no uncaught error', async (t) => {
  const uncaught = watchUncaught(t)
  const db = await testDatabase(t)
  // pg-pool's end() resolves once it has *started* ending its idle clients, while their sockets are
  // still open and pg-pool still re-emits their errors on the pool. A FATAL that arrives then (a
  // server shutdown, a failover, pg_terminate_backend) is an 'error' on the pool after close().
  for (let round = 0; round < 10; round++) {
    const app = Fastify()
    await app.register(dbSession, { connectionString: db.url })
    const clients: Array<{ emit: (event: string, error: Error) => boolean }> = []
    app.db.pool.on('connect', (client) => { clients.push(client) })
    await app.db.transaction((trx) => trx.selectNoFrom((eb) => eb.val(1).as('one')).execute())
    await app.close()
    // For real: the backend is terminated the moment close() resolves; this loses the race to
    // the client's own goodbye most of the time, and wins it often enough to crash a process.
    await db.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [db.name])
    t.equal(await eventually(() => db.connections(), (n) => n === 0), 0)
    if (round === 0) {
      // Deterministically: the same FATAL as pg delivers it, on a client the closed pool had.
      t.equal(clients.length, 1)
      const fatal = Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' })
      let thrown: Error | null = null
      try {
        clients[0].emit('error', fatal)
      } catch (error) {
        thrown = error as Error
      }
      t.equal(thrown?.message ?? null, null, 'a late error on a closed pool\'s client is handled, not thrown')
    }
  }
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(uncaught.map((error) => error.message), [], 'nothing went unhandled')
})
