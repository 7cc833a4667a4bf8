// Retries for fastify.db.transaction, with the same real conflicts as requests (a write skew at
// serializable, a deadlock from locks taken in opposite orders, each made certain by a barrier),
// and the retry options checked.
import t from 'tap'
import type { Transaction } from 'kysely'
import { eventually, testDatabase } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'
import { barrier, capturedLogs } from './helpers/util.js'

// Real conflicts, several databases: on a loaded machine longer than tap's default 30 s.
t.setTimeout(90_000)

const debugLogs = () => capturedLogs('debug')

const RETRY_MESSAGE = /running its function again/

/** Each call reads how many slots are taken and takes the next; first attempts all read before any writes. */
function takeSlot (parties: number) {
  const gate = barrier(parties)
  let runs = 0
  const fn = (attempts: { n: number }) => async (trx: Transaction<any>) => {
    runs++
    const attempt = ++attempts.n
    const { taken } = await trx.selectFrom('slots').select((eb) => eb.fn.countAll<string>().as('taken')).executeTakeFirstOrThrow()
    if (attempt === 1) await gate.arrive()
    await trx.insertInto('slots').values({ position: Number(taken) + 1 }).execute()
    return Number(taken) + 1
  }
  return { fn, runs: () => runs }
}

async function positions (db: TestDatabase): Promise<number[]> {
  return (await db.query('SELECT position FROM slots ORDER BY position')).rows.map((row) => row.position)
}

t.test('fastify.db.transaction, write skew at serializable, retries: 3: both resolve, one slot each', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE slots (position int NOT NULL)')
  const logs = debugLogs()
  const app = await db.app({}, logs.options)
  const { fn, runs } = takeSlot(2)
  const results = await Promise.all([{ n: 0 }, { n: 0 }].map((attempts) =>
    app.db.transaction(fn(attempts), { isolationLevel: 'serializable', retries: 3 })))
  t.same(results.sort(), [1, 2])
  t.same(await positions(db), [1, 2], 'the rows of a serial order')
  t.equal(runs(), 3, 'the loser ran its function twice')
  const stats = app.db.stats()
  t.equal(stats.retries, 1)
  t.equal(stats.commits, 2)
  t.match(app.db.metrics(), /^fastify_db_session_retries_total\{pool="default"\} 1$/m)
  t.match(logs.lines.filter((line) => RETRY_MESSAGE.test(line.msg)), [{ level: 20, attempt: 2, of: 4, err: { code: 'FST_DB_SESSION_SERIALIZATION_FAILURE' } }])
})

t.test('fastify.db.transaction, write skew, no retries: one rejects with FST_DB_SESSION_SERIALIZATION_FAILURE', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE slots (position int NOT NULL)')
  const app = await db.app()
  const { fn, runs } = takeSlot(2)
  const results = await Promise.allSettled([{ n: 0 }, { n: 0 }].map((attempts) =>
    app.db.transaction(fn(attempts), { isolationLevel: 'serializable' })))
  const rejected = results.filter((result) => result.status === 'rejected')
  t.equal(rejected.length, 1)
  t.match(rejected[0], { reason: { code: 'FST_DB_SESSION_SERIALIZATION_FAILURE', statusCode: 409 } })
  t.same(await positions(db), [1])
  t.equal(runs(), 2)
  t.equal(app.db.stats().retries, 0)
})

async function deadlock (db: TestDatabase, retries: number | undefined, pluginRetries?: number) {
  await db.query('CREATE TABLE accounts (id int PRIMARY KEY, touched int NOT NULL DEFAULT 0)')
  await db.query('INSERT INTO accounts (id) VALUES (1), (2)')
  await db.query(`ALTER DATABASE ${db.name} SET deadlock_timeout = '50ms'`)
  const app = await db.app(pluginRetries === undefined ? {} : { retries: pluginRetries })
  const gate = barrier(2)
  let runs = 0
  const touch = (trx: Transaction<any>, id: number) => trx.updateTable('accounts').set((eb) => ({ touched: eb('touched', '+', 1) })).where('id', '=', id).execute()
  const lockBoth = (first: number, second: number) => {
    let attempt = 0
    return app.db.transaction(async (trx) => {
      runs++
      attempt++
      await touch(trx, first)
      if (attempt === 1) await gate.arrive()
      await touch(trx, second)
      return attempt
    }, retries === undefined ? {} : { retries })
  }
  const results = await Promise.allSettled([lockBoth(1, 2), lockBoth(2, 1)])
  const touched = (await db.query('SELECT touched FROM accounts ORDER BY id')).rows.map((row) => row.touched)
  return { app, results, touched, runs }
}

t.test('fastify.db.transaction, a real deadlock, retries: 3: both resolve, both rows touched twice', async (t) => {
  const db = await testDatabase(t)
  const { app, results, touched, runs } = await deadlock(db, 3)
  t.same(results.map((result) => result.status), ['fulfilled', 'fulfilled'])
  t.same(touched, [2, 2], 'a serial order')
  t.equal(runs, 3)
  t.equal(app.db.stats().retries, 1)
  t.equal(await eventually(() => db.idleInTransaction(), (n) => n === 0), 0)
})

t.test('fastify.db.transaction, a real deadlock, the plugin\'s retries option as the default: both resolve', async (t) => {
  const db = await testDatabase(t)
  const { app, results, touched } = await deadlock(db, undefined, 2)
  t.same(results.map((result) => result.status), ['fulfilled', 'fulfilled'])
  t.same(touched, [2, 2])
  t.equal(app.db.stats().retries, 1)
})

t.test('fastify.db.transaction, a real deadlock, retries: 0 over the plugin\'s 3: the victim rejects with FST_DB_SESSION_DEADLOCK', async (t) => {
  const db = await testDatabase(t)
  const { app, results, touched, runs } = await deadlock(db, 0, 3)
  t.same(results.map((result) => result.status).sort(), ['fulfilled', 'rejected'])
  t.match(results.find((result) => result.status === 'rejected'), { reason: { code: 'FST_DB_SESSION_DEADLOCK' } })
  t.same(touched, [1, 1])
  t.equal(runs, 2)
  t.equal(app.db.stats().retries, 0)
})

t.test('fastify.db.transaction: a function that catches the failure and returns is still run again', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)')
  await db.query('INSERT INTO counters VALUES (1, 0)')
  const app = await db.app()
  let runs = 0
  const result = await app.db.transaction(async (trx) => {
    const attempt = ++runs
    const { n } = await trx.selectFrom('counters').select('n').where('id', '=', 1).executeTakeFirstOrThrow()
    if (attempt === 1) await db.query('UPDATE counters SET n = n + 100 WHERE id = 1')
    try {
      await trx.updateTable('counters').set({ n: n + 1 }).where('id', '=', 1).execute()
    } catch {
      return 'swallowed'
    }
    return 'done'
  }, { isolationLevel: 'repeatable read', retries: 1 })
  t.equal(result, 'done')
  t.equal(runs, 2)
  t.equal((await db.query('SELECT n FROM counters')).rows[0].n, 101)
})

t.test('fastify.db.transaction: close() during the backoff rejects with the last failure at once', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)')
  await db.query('INSERT INTO counters VALUES (1, 0)')
  const logs = debugLogs()
  const app = await db.app({ retries: 3, retryDelayMillis: 60000 }, logs.options)
  let runs = 0
  const pending = app.db.transaction(async (trx) => {
    runs++
    const { n } = await trx.selectFrom('counters').select('n').where('id', '=', 1).executeTakeFirstOrThrow()
    await db.query('UPDATE counters SET n = n + 100 WHERE id = 1')
    await trx.updateTable('counters').set({ n: n + 1 }).where('id', '=', 1).execute()
  }, { isolationLevel: 'repeatable read' })
  const settled = pending.then(() => null, (error) => error)
  await eventually(async () => logs.lines.filter((line) => RETRY_MESSAGE.test(line.msg)), (found) => found.length > 0, 10000)
  await app.close()
  t.match(await settled, { code: 'FST_DB_SESSION_SERIALIZATION_FAILURE' })
  t.equal(runs, 1)
  t.equal(app.db.stats().retries, 0)
})

t.test('the retry options are checked: plugin, route and fastify.db.transaction', async (t) => {
  const db = await testDatabase(t)
  for (const [options, message] of [
    [{ retries: -1 }, /retries must be an integer from 0 to 10; instead got '-1'/],
    [{ retries: 1.5 }, /retries must be an integer from 0 to 10; instead got '1.5'/],
    [{ retries: '3' }, /retries must be an integer from 0 to 10; instead got '3'/],
    [{ retries: 11 }, /retries must be an integer from 0 to 10; instead got '11'/],
    [{ retryDelayMillis: -1 }, /retryDelayMillis must be an integer number of milliseconds from 0 to 60000; instead got '-1'/],
    [{ retryDelayMillis: 60001 }, /retryDelayMillis must be an integer number of milliseconds from 0 to 60000; instead got '60001'/],
    [{ retryDelayMillis: '20' }, /retryDelayMillis must be an integer number of milliseconds from 0 to 60000; instead got '20'/]
  ] as const) {
    await t.rejects(db.app(options as never), { code: 'FST_DB_SESSION_INVALID_OPTION', message }, JSON.stringify(options))
  }
  const app = await db.app({ retries: 10, retryDelayMillis: 0 })
  t.throws(() => app.get('/bad', { config: { db: { retries: 20 } } }, async () => 1), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /route \/bad: config\.db\.retries must be an integer from 0 to 10; instead got '20'/
  })
  t.throws(() => app.get('/misspelt', { config: { db: { retrys: 2 } as never } }, async () => 1), {
    message: /config\.db has an unknown key 'retrys' \(did you mean 'retries'\?\)/
  })
  await t.rejects(app.db.transaction(async () => 1, { retries: -2 }), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /fastify\.db\.transaction: retries must be an integer from 0 to 10; instead got '-2'/
  })
  t.equal(await db.connections(), 0, 'nothing was opened')
})
