// Kysely's in-flight abort strategies (execute({ signal, inflightQueryAbortStrategy })) on
// request.db, fastify.db.transaction and a plain Kysely transaction: what the server does with the
// running statement, what becomes of the transaction, and that no connection leaks.
import t from 'tap'
import { sql } from 'kysely'
import type { Transaction } from 'kysely'
import { eventually } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'
import { watchUncaught } from './helpers/util.js'
import { describe, threeWays, WAYS } from './helpers/three-ways.js'
import type { Way } from './helpers/three-ways.js'

interface Activity { state: string, query: string }

/** The backend `pid` as pg_stat_activity shows it, or null when it is gone. */
async function backend (db: TestDatabase, pid: number): Promise<Activity | null> {
  const { rows } = await db.query<Activity>('SELECT state, query FROM pg_stat_activity WHERE pid = $1', [pid])
  return rows[0] ?? null
}

async function backendPid (trx: Transaction<any>): Promise<number> {
  return (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(trx)).rows[0].pid
}

/** Starts a 30-second statement with `strategy`, aborts it once the server runs it, and says how it ended. */
async function abortRunning (db: TestDatabase, trx: Transaction<any>, pid: number, strategy: 'cancel query' | 'kill session') {
  const controller = new AbortController()
  const running = sql`SELECT pg_sleep(30)`.execute(trx, { signal: controller.signal, inflightQueryAbortStrategy: strategy })
    .then(() => 'finished', describe)
  await eventually(() => backend(db, pid), (seen) => seen?.state === 'active' && seen.query.includes('pg_sleep'))
  controller.abort()
  return running
}

t.test("'cancel query' cancels the running statement on the server; the transaction is aborted and rolled back", async (t) => {
  const ways = await threeWays(t, {}, 'CREATE TABLE items (id serial PRIMARY KEY, way text NOT NULL)')
  const { db } = ways
  const seen: Record<string, unknown> = {}
  const outcomes = await ways.run(async (trx, way) => {
    await trx.insertInto('items').values({ way }).execute()
    const pid = await backendPid(trx)
    const aborted = await abortRunning(db, trx, pid, 'cancel query')
    // The statement stops on the server: the backend stays, its transaction aborted.
    const after = await eventually(() => backend(db, pid), (activity) => activity?.state === 'idle in transaction (aborted)')
    const next = await trx.selectNoFrom((eb) => eb.val(1).as('one')).execute().then(() => 'ran', describe)
    seen[way] = { aborted, state: after?.state, next }
    return 'the body returned'
  })
  for (const way of WAYS) {
    t.same(seen[way], { aborted: 'AbortError', state: 'idle in transaction (aborted)', next: '25P02' }, `${way}: canceled on the server; the next query meets 25P02`)
  }
  // Returning normally after it commits nothing; each way says so its own way.
  t.same(outcomes['request.db'], { error: 'FST_DB_SESSION_TRANSACTION_ABORTED', status: 500 }, 'request.db: the response says the transaction was aborted')
  t.same(outcomes['fastify.db.transaction'], { error: 'FST_DB_SESSION_TRANSACTION_ABORTED' })
  t.same(outcomes['plain Kysely'], { error: 'AbortedTransactionError' }, "plain Kysely: its own AbortedTransactionError for COMMIT's ROLLBACK")
  t.same((await db.query('SELECT way FROM items')).rows, [], 'nothing committed')
  const stats = ways.app.db.stats()
  // COMMIT answered with ROLLBACK counts as a failed commit, as for any aborted transaction.
  t.match(stats, { active: 0, commits: 0, commitFailures: 2, rollbacks: 2, destroyed: 0 }, 'the connection went back to the pool, not destroyed')
  t.equal(ways.pool.totalCount, ways.pool.idleCount, 'the plain pool has no client out')
  t.equal(await db.idleInTransaction(), 0)
})

// A body that rethrows the AbortError at once: the unit of work cancels before anything else is
// sent, then rolls back. Plain Kysely sends its ROLLBACK first, and its cancel handler, seeing
// another query on the connection, cancels nothing: the statement runs to its end before the
// rollback (so the plain run sleeps 1 s, not 30).
const sleeps = (way: Way) => way === 'plain Kysely' ? 1 : 30

t.test("'cancel query' whose error the body lets through rolls back like any failure", async (t) => {
  const ways = await threeWays(t, {}, 'CREATE TABLE items (id serial PRIMARY KEY, way text NOT NULL)')
  const { db } = ways
  const outcomes = await ways.run(async (trx, way) => {
    await trx.insertInto('items').values({ way }).execute()
    const controller = new AbortController()
    const running = sql`SELECT pg_sleep(${sleeps(way)})`.execute(trx, { signal: controller.signal, inflightQueryAbortStrategy: 'cancel query' })
    await eventually(() => db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%'"), ({ rows }) => rows[0].n === 1)
    controller.abort()
    return running
  })
  t.same(outcomes, {
    'request.db': { error: 'AbortError', status: 500 },
    'fastify.db.transaction': { error: 'AbortError' },
    'plain Kysely': { error: 'AbortError' }
  })
  t.equal((await db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'")).rows[0].n, 0, 'no statement left running')
  t.same((await db.query('SELECT way FROM items')).rows, [])
  t.match(ways.app.db.stats(), { active: 0, rollbacks: 2, destroyed: 0 })
})

t.test("'kill session' ends the backend; the unit is rolled back and its connection destroyed, never pooled", async (t) => {
  const ways = await threeWays(t, {}, 'CREATE TABLE items (id serial PRIMARY KEY, way text NOT NULL)')
  const { db } = ways
  const seen: Record<string, unknown> = {}
  const pids: Record<string, number> = {}
  const uncaught = watchUncaught(t)
  const outcomes = await ways.run(async (trx, way) => {
    await trx.insertInto('items').values({ way }).execute()
    const pid = pids[way] = await backendPid(trx)
    const aborted = await abortRunning(db, trx, pid, 'kill session')
    const gone = await eventually(() => backend(db, pid), (activity) => activity === null)
    const next = await trx.selectNoFrom((eb) => eb.val(1).as('one')).execute().then(() => 'ran', describe)
    seen[way] = { aborted, gone: gone === null, next }
    return 'the body returned'
  })
  t.same(seen['request.db'], { aborted: 'AbortError', gone: true, next: 'FST_DB_SESSION_TRANSACTION_FINISHED' }, 'request.db: the backend is gone; later queries are refused')
  t.same(seen['fastify.db.transaction'], { aborted: 'AbortError', gone: true, next: 'FST_DB_SESSION_TRANSACTION_FINISHED' })
  t.match(seen['plain Kysely'], { aborted: 'AbortError', gone: true }, 'plain Kysely: the backend is gone too')
  t.not((seen['plain Kysely'] as { next: string }).next, 'ran', 'plain Kysely: its next query fails on the dead connection')
  t.same(outcomes['request.db'], { error: 'FST_DB_SESSION_CONNECTION_KILLED', status: 500 }, 'request.db: a handler that returns anyway is told its work was rolled back')
  t.same(outcomes['fastify.db.transaction'], { error: 'FST_DB_SESSION_CONNECTION_KILLED' })
  t.ok(outcomes['plain Kysely'].error, `plain Kysely: its commit fails too (${outcomes['plain Kysely'].error})`)
  t.same(ways.clientErrors.map((error) => error.message), ['Connection terminated unexpectedly'],
    'plain Kysely: its pg client emits an error nobody listens to (without the test\'s listener, an uncaught exception)')
  t.same(uncaught, [], 'the plugin listens to its connections: nothing uncaught')
  t.same((await db.query('SELECT way FROM items')).rows, [], 'nothing committed')
  const stats = ways.app.db.stats()
  t.match(stats, { active: 0, destroyed: 2, rollbacks: 2, commits: 0 }, 'both connections destroyed, counted as rolled back')
  // The pool holds no dead client: a new unit gets a live backend.
  const after = await ways.app.db.transaction((trx) => backendPid(trx))
  t.notOk([pids['request.db'], pids['fastify.db.transaction']].includes(after), 'a new transaction runs on a new backend')
  t.equal(await db.connections(), ways.pool.totalCount + ways.app.db.stats().total, 'no backend beyond the two pools\' own')
  t.equal(await db.idleInTransaction(), 0)
})

t.test("'kill session' whose error the body lets through: the owner's outcome is the abort", async (t) => {
  const ways = await threeWays(t)
  const outcomes = await ways.run(async (trx, way) => {
    const controller = new AbortController()
    const running = sql`SELECT pg_sleep(${sleeps(way)})`.execute(trx, { signal: controller.signal, inflightQueryAbortStrategy: 'kill session' })
    await eventually(() => ways.db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%'"), ({ rows }) => rows[0].n === 1)
    controller.abort()
    return running
  })
  t.same(outcomes, {
    // The unit was ended for the request: its response says so, whatever the handler answered.
    'request.db': { error: 'FST_DB_SESSION_CONNECTION_KILLED', status: 500 },
    'fastify.db.transaction': { error: 'AbortError' },
    'plain Kysely': { error: 'AbortError' }
  })
  t.match(ways.app.db.stats(), { active: 0, destroyed: 2, rollbacks: 2 })
  t.equal(await ways.db.connections(), ways.pool.totalCount + ways.app.db.stats().total, 'the killed backends are gone')
})

t.test("fastify.db.kysely's own transactions: both strategies act on the server, as a plain Kysely on a pg.Pool does", async (t) => {
  const ways = await threeWays(t)
  const { db, app } = ways
  const uncaught = watchUncaught(t)
  const seen: Record<string, unknown> = {}
  for (const strategy of ['cancel query', 'kill session'] as const) {
    const outcome = await app.db.kysely.transaction().execute(async (trx) => {
      const pid = await backendPid(trx)
      const aborted = await abortRunning(db, trx, pid, strategy)
      // Kysely cancels on a control connection of its own; without one it would wait for the
      // transaction's, busy with the statement, and cancel nothing.
      const after = await eventually(() => backend(db, pid), (activity) => activity === null || activity.state !== 'active')
      seen[strategy] = { aborted, after: after?.state ?? 'gone' }
      return 'returned'
    }).catch(describe)
    seen[`${strategy}: outcome`] = outcome
  }
  t.same(seen, {
    'cancel query': { aborted: 'AbortError', after: 'idle in transaction (aborted)' },
    'cancel query: outcome': 'AbortedTransactionError',
    'kill session': { aborted: 'AbortError', after: 'gone' },
    // Kysely's COMMIT on the dead connection fails with pg's own error.
    'kill session: outcome': 'Error'
  })
  t.match(app.db.stats(), { active: 0, destroyed: 1 }, 'the killed connection was destroyed, not pooled')
  t.same(uncaught, [], 'its connection is listened to: nothing uncaught')
})
