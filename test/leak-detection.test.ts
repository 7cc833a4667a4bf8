// Leak detection: a transaction held past leakDetectionMillis is reported once and counted; one
// held past leakTimeoutMillis is rolled back by destroying its connection.
import t from 'tap'
import Fastify from 'fastify'
import { sql } from 'kysely'
import dbSession from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'
import { capturedLogs, itemNames } from './helpers/util.js'

const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

t.test('leakDetectionMillis: a slow transaction is reported once, with route, request id, age and where it began; it still commits', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const logs = capturedLogs()
  const app = await db.app({ leakDetectionMillis: 100 }, logs.options)
  app.post('/slow', async function slowHandler (request) {
    await request.db.insertInto('items').values({ name: 'slow' }).execute()
    await sleep(350)
    return { ok: true }
  })
  app.post('/quick', async (request) => {
    await request.db.insertInto('items').values({ name: 'quick' }).execute()
    return { ok: true }
  })

  t.equal((await app.inject({ method: 'POST', url: '/quick' })).statusCode, 200)
  t.equal(logs.lines.length, 0, 'a quick transaction is not reported')
  const res = await app.inject({ method: 'POST', url: '/slow' })
  t.equal(res.statusCode, 200, 'reporting does not end the transaction')
  t.same(await itemNames(db), ['quick', 'slow'])
  const reports = logs.lines.filter((line) => line.msg.includes('leakDetectionMillis'))
  t.equal(reports.length, 1, 'reported once, not on every tick')
  const [report] = reports
  t.equal(report.level, 40, 'as a warning')
  t.equal(report.route, 'POST /slow')
  t.equal(report.reqId, 'req-2', 'through the request\'s own logger')
  t.ok((report.heldMillis ?? 0) >= 100, `held ${report.heldMillis} ms`)
  t.match(report.acquiredAt, /slowHandler/, 'the stack names the handler that issued the first query')
  t.match(report.acquiredAt, /leak-detection\.test\.ts/)
  t.equal(app.db.stats().leaks, 1, 'counted in leaks')
})

t.test('leakTimeoutMillis: past the hard limit the transaction is rolled back, its backend terminated, the request answered 500', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const logs = capturedLogs()
  const app = await db.app({ leakDetectionMillis: 50, leakTimeoutMillis: 200 }, logs.options)
  let laterError: { code?: string } | undefined
  app.post('/stuck', async (request) => {
    await request.db.insertInto('items').values({ name: 'stuck' }).execute()
    await sleep(600)
    try {
      await request.db.insertInto('items').values({ name: 'later' }).execute()
    } catch (error) {
      laterError = error as { code?: string }
    }
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/stuck' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_DB_SESSION_HOLD_TIMEOUT')
  t.match(res.json().message, /longer than leakTimeoutMillis \(200 ms\)/)
  t.equal(laterError?.code, 'FST_DB_SESSION_TRANSACTION_FINISHED', 'the handler\'s later query was refused')
  t.same(await itemNames(db), [], 'nothing was committed')
  const stats = app.db.stats()
  t.equal(stats.leaks, 1, 'one leak, though both the warning and the limit fired')
  t.equal(stats.destroyed, 1)
  t.equal(stats.rollbacks, 1)
  t.equal(stats.active, 0)
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0, 'its backend is gone')
  t.equal(logs.lines.filter((line) => line.level === 40 && line.msg.startsWith('fastify-db-session')).length, 1, 'one warning')
  t.equal(logs.lines.filter((line) => line.level === 50 && line.msg.startsWith('fastify-db-session')).length, 1, 'one error at the limit')
})

t.test('leakTimeoutMillis: a statement still running at the limit is stopped too', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app({ leakTimeoutMillis: 200 }, { logger: { level: 'silent' } })
  app.post('/sleepy', async (request) => {
    await request.db.insertInto('items').values({ name: 'sleepy' }).execute()
    await sql`SELECT pg_sleep(10)`.execute(request.db)
    return { ok: true }
  })
  const started = Date.now()
  const res = await app.inject({ method: 'POST', url: '/sleepy' })
  t.ok(Date.now() - started < 3000, `answered soon after the limit (${Date.now() - started} ms), not after the 10 s sleep`)
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_DB_SESSION_HOLD_TIMEOUT')
  t.same(await itemNames(db), [])
  t.equal(app.db.stats().leaks, 1, 'counted without a warning threshold')
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0, 'the sleeping backend was terminated')
})

t.test('fastify.db.transaction is watched too, reported through the instance logger', async (t) => {
  const db = await testDatabase(t)
  const logs = capturedLogs()
  const app = await db.app({ leakDetectionMillis: 50 }, logs.options)
  await app.db.transaction(async (trx) => {
    await sql`SELECT 1`.execute(trx)
    await sleep(150)
  })
  const [report] = logs.lines
  t.equal(report?.route, 'fastify.db.transaction')
  t.equal(app.db.stats().leaks, 1)
  t.equal(app.db.stats().commits, 1)
})

t.test('leak options are checked', async (t) => {
  for (const options of [{ leakDetectionMillis: -1 }, { leakTimeoutMillis: 0.5 }]) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(dbSession, { connectionString: 'postgres://127.0.0.1:1/none', ...options }).ready() }, {
      code: 'FST_DB_SESSION_INVALID_OPTION',
      message: /(leakDetectionMillis|leakTimeoutMillis) must be an integer of at least 0/
    })
  }
})

t.test('leakTimeoutMillis on a pool connected through a Unix socket: the statement is canceled there too', async (t) => {
  const db = await testDatabase(t)
  const directory = (await db.query<{ dirs: string }>('SELECT current_setting(\'unix_socket_directories\') AS dirs')).rows[0].dirs.split(',')[0].trim()
  const url = new URL(db.url)
  const app = await db.app({
    connectionString: undefined,
    pool: { host: directory, port: Number(url.port), database: db.name, user: decodeURIComponent(url.username), password: decodeURIComponent(url.password) },
    leakTimeoutMillis: 200
  }, { logger: { level: 'silent' } })
  let address: string | null | undefined
  app.get('/sleepy', async (request) => {
    address = (await sql<{ address: string | null }>`SELECT inet_client_addr()::text AS address`.execute(request.db)).rows[0].address
    await sql`SELECT pg_sleep(10)`.execute(request.db)
    return { slept: true }
  })
  const res = await app.inject('/sleepy')
  t.equal(address, null, 'the connection is a Unix socket\'s (no client address)')
  t.equal(res.json().code, 'FST_DB_SESSION_HOLD_TIMEOUT')
  const sleeping = "AND state = 'active' AND query LIKE '%pg_sleep%'"
  const stillSleeping = () => db.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() ${sleeping}`, [db.name]).then((r) => r.rows[0].n as number)
  t.equal(await eventually(stillSleeping, (n) => n === 0, 1500), 0, 'the sleeping backend, reached through the socket, stopped')
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0, 'and is gone')
})
