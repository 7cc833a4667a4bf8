// Retries for requests, with real conflicts: a write skew at serializable and a real deadlock,
// each made certain by a barrier that holds every first attempt until all have read (or locked)
// what the others will write. With retries every request ends 2xx and the data is a serial
// order's; without, the loser gets its 409.
import t from 'tap'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { eventually, testDatabase } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'
import { barrier, capturedLogs } from './helpers/util.js'

// Real conflicts, several databases: on a loaded machine longer than tap's default 30 s.
t.setTimeout(90_000)

const debugLogs = () => capturedLogs('debug')

const RETRY_MESSAGE = /running the handler again/

/** Counts each caller's attempts: `attempt(request)` is 1 on its first run, 2 on its first retry... */
function attempts (): { attempt: (key: string) => number, of: (key: string) => number } {
  const seen = new Map<string, number>()
  return {
    attempt (key) {
      const n = (seen.get(key) ?? 0) + 1
      seen.set(key, n)
      return n
    },
    of: (key) => seen.get(key) ?? 0
  }
}

/**
 * Write skew: each request reads how many slots are taken and takes the next one. Every first
 * attempt waits at the barrier after its read, so all of them read before any writes, and all
 * but one must fail at serializable (at its INSERT or at its COMMIT, by which side committed first).
 */
async function writeSkewApp (db: TestDatabase, parties: number, options: Record<string, unknown>, fastifyOptions = {}) {
  await db.query('CREATE TABLE slots (position int NOT NULL)')
  const app = await db.app({ isolationLevel: 'serializable', ...options }, fastifyOptions)
  const gate = barrier(parties)
  const runs = attempts()
  app.post('/slots/:caller', async (request: FastifyRequest<{ Params: { caller: string } }>) => {
    const attempt = runs.attempt(request.params.caller)
    const { taken } = await request.db.selectFrom('slots' as never)
      .select((eb) => eb.fn.countAll<string>().as('taken')).executeTakeFirstOrThrow()
    if (attempt === 1) await gate.arrive()
    const position = Number(taken) + 1
    await request.db.insertInto('slots' as never).values({ position } as never).execute()
    return { position, attempt }
  })
  return { app, runs }
}

async function positions (db: TestDatabase): Promise<number[]> {
  return (await db.query('SELECT position FROM slots ORDER BY position')).rows.map((row) => row.position)
}

t.test('write skew at serializable, retries: 3: every request ends 200, one slot each, as in a serial order', async (t) => {
  const db = await testDatabase(t)
  const logs = debugLogs()
  const { app, runs } = await writeSkewApp(db, 2, { retries: 3 }, logs.options)
  const responses = await Promise.all(['a', 'b'].map((caller) => app.inject({ method: 'POST', url: `/slots/${caller}` })))
  t.same(responses.map((res) => res.statusCode), [200, 200], 'both answered 200')
  t.same(responses.map((res) => res.json().position).sort(), [1, 2], 'each got its own slot')
  t.same(await positions(db), [1, 2], 'the rows are those of a serial order')
  t.same([runs.of('a'), runs.of('b')].sort(), [1, 2], 'the loser ran its handler twice, the winner once')
  t.same(responses.map((res) => res.json().attempt).sort(), [1, 2], 'the client saw the last attempt')
  const stats = app.db.stats()
  t.equal(stats.retries, 1, 'one retry, counted')
  t.equal(stats.commits, 2)
  // The loser fails at its INSERT when the winner committed first, else at its own COMMIT:
  // either way its first attempt ended without a commit (a rolled-back unit or a failed COMMIT).
  t.equal(stats.rollbacks, 1, 'the first attempt of the loser was not committed')
  t.match(app.db.metrics(), /^fastify_db_session_retries_total\{pool="default"\} 1$/m, 'and in metrics()')
  const retried = logs.lines.filter((line) => RETRY_MESSAGE.test(line.msg))
  t.equal(retried.length, 1, 'the retry was logged once')
  t.match(retried[0], { level: 20, attempt: 2, of: 4, err: { code: 'FST_DB_SESSION_SERIALIZATION_FAILURE' } }, 'at debug level, with the attempt number')
  t.equal(await db.idleInTransaction(), 0)
})

t.test('write skew with three requests, retries: 3: all end 200 with slots 1 to 3', async (t) => {
  const db = await testDatabase(t)
  const { app } = await writeSkewApp(db, 3, { retries: 3 })
  const responses = await Promise.all(['a', 'b', 'c'].map((caller) => app.inject({ method: 'POST', url: `/slots/${caller}` })))
  t.same(responses.map((res) => res.statusCode), [200, 200, 200])
  t.same(await positions(db), [1, 2, 3], 'the rows are those of a serial order')
  t.ok(app.db.stats().retries >= 2, `the two losers of the first round were retried (${app.db.stats().retries} retries)`)
})

t.test('write skew, retries: 0 (the default): the loser gets 409 FST_DB_SESSION_SERIALIZATION_FAILURE', async (t) => {
  const db = await testDatabase(t)
  const { app, runs } = await writeSkewApp(db, 2, {})
  const responses = await Promise.all(['a', 'b'].map((caller) => app.inject({ method: 'POST', url: `/slots/${caller}` })))
  t.same(responses.map((res) => res.statusCode).sort(), [200, 409])
  t.equal(responses.find((res) => res.statusCode === 409)?.json().code, 'FST_DB_SESSION_SERIALIZATION_FAILURE')
  t.same(await positions(db), [1])
  t.same([runs.of('a'), runs.of('b')], [1, 1], 'no handler ran twice')
  t.equal(app.db.stats().retries, 0)
})

/**
 * A real deadlock: two requests lock the two accounts in opposite orders. Every first attempt
 * waits at the barrier once it holds its first row, so each then waits for the other's row.
 */
async function deadlockApp (db: TestDatabase, options: Record<string, unknown>) {
  await db.query('CREATE TABLE accounts (id int PRIMARY KEY, touched int NOT NULL DEFAULT 0)')
  await db.query('INSERT INTO accounts (id) VALUES (1), (2)')
  // Detected quickly; set for the database, so every pooled connection has it.
  await db.query(`ALTER DATABASE ${db.name} SET deadlock_timeout = '50ms'`)
  const app = await db.app(options)
  const gate = barrier(2)
  const runs = attempts()
  const touch = (request: FastifyRequest, id: number) => request.db.updateTable('accounts' as never)
    .set({ touched: ((eb: any) => eb('touched', '+', 1)) as never }).where('id' as never, '=', id as never).execute()
  app.post('/touch/:first/:second', async (request: FastifyRequest<{ Params: { first: string, second: string } }>) => {
    const attempt = runs.attempt(request.params.first)
    await touch(request, Number(request.params.first))
    if (attempt === 1) await gate.arrive()
    await touch(request, Number(request.params.second))
    return { attempt }
  })
  return { app, runs }
}

async function touched (db: TestDatabase): Promise<number[]> {
  return (await db.query('SELECT touched FROM accounts ORDER BY id')).rows.map((row) => row.touched)
}

t.test('a real deadlock, retries: 3: both requests end 200 and both rows were touched twice', async (t) => {
  const db = await testDatabase(t)
  const { app, runs } = await deadlockApp(db, { retries: 3 })
  const [a, b] = await Promise.all([
    app.inject({ method: 'POST', url: '/touch/1/2' }),
    app.inject({ method: 'POST', url: '/touch/2/1' })
  ])
  t.same([a.statusCode, b.statusCode], [200, 200])
  t.same(await touched(db), [2, 2], 'each request touched each row once: a serial order')
  t.same([runs.of('1'), runs.of('2')].sort(), [1, 2], 'the deadlock victim ran again')
  t.equal(app.db.stats().retries, 1)
  t.equal(await eventually(() => db.idleInTransaction(), (n) => n === 0), 0)
})

t.test('a real deadlock, retries: 0: the victim gets 409 FST_DB_SESSION_DEADLOCK', async (t) => {
  const db = await testDatabase(t)
  const { app } = await deadlockApp(db, { retries: 0 })
  const [a, b] = await Promise.all([
    app.inject({ method: 'POST', url: '/touch/1/2' }),
    app.inject({ method: 'POST', url: '/touch/2/1' })
  ])
  t.same([a.statusCode, b.statusCode].sort(), [200, 409])
  t.equal((a.statusCode === 409 ? a : b).json().code, 'FST_DB_SESSION_DEADLOCK')
  t.same(await touched(db), [1, 1], 'only the survivor\'s work is there')
  t.equal(app.db.stats().retries, 0)
})

export type { FastifyInstance }
