// respondBeforeCommit: a read-only transaction has nothing to lose at COMMIT: its response goes
// before the COMMIT, which still runs, and the connection still goes back. Off by default. Where the client could notice (a failed query,
// callbacks, a lock held until COMMIT, serializable, a write), the response still waits.
import t from 'tap'
import type { FastifyRequest } from 'fastify'
import { sql } from 'kysely'
import type pg from 'pg'
import { eventually, testDatabase } from './helpers/database.js'
import { capturedLogs, deferred } from './helpers/util.js'

type Callback = (error: Error | null, result?: unknown) => void

/**
 * Watches the COMMITs the pool's clients get: `events` says when each was sent and answered;
 * `hold` keeps the next COMMITs from reaching PostgreSQL until `release()`.
 */
function watchCommits (pool: pg.Pool, events: string[]) {
  let gate: Promise<void> | null = null
  let open = (): void => {}
  pool.on('acquire', (client) => {
    const marked = client as pg.PoolClient & { watched?: boolean }
    if (marked.watched === true) return
    marked.watched = true
    const query = client.query.bind(client) as (...args: unknown[]) => unknown
    client.query = ((...args: unknown[]) => {
      if (args[0] !== 'COMMIT') return query(...args)
      events.push('COMMIT sent')
      const callback = args[2] as Callback
      const answered: Callback = (error, result) => {
        events.push(error === null ? 'COMMIT answered' : 'COMMIT failed')
        callback(error, result)
      }
      if (gate === null) return query(args[0], args[1], answered)
      gate.then(() => query(args[0], args[1], answered))
    }) as typeof client.query
  })
  return {
    hold () {
      const { promise, resolve } = deferred()
      gate = promise
      open = resolve
    },
    release () {
      gate = null
      open()
    }
  }
}

async function pid (request: FastifyRequest): Promise<number> {
  return (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(request.db)).rows[0].pid
}

t.test('a read-only route answers before its COMMIT; the COMMIT still runs and the connection goes back', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1, respondBeforeCommit: true })
  const events: string[] = []
  const commits = watchCommits(app.db.pool, events)
  app.addHook('onResponse', async () => { events.push('response') })
  app.get('/', { config: { db: { accessMode: 'read only' } } }, async (request) => ({ pid: await pid(request) }))
  await app.ready()
  commits.hold()
  // With the COMMIT held, a response that waited for it would never come.
  const response = await app.inject('/')
  t.equal(response.statusCode, 200)
  t.same(events.slice().sort(), ['COMMIT sent', 'response'], 'the response went while its COMMIT was held')
  t.equal(app.db.stats().active, 1, 'the connection is still the transaction\'s')
  commits.release()
  await eventually(async () => app.db.stats().active, (active) => active === 0)
  t.equal(events.at(-1), 'COMMIT answered')
  t.equal(app.db.stats().commits, 1)
  t.equal(app.db.stats().active, 0, 'the connection went back')
  t.equal(await db.idleInTransaction(), 0)
  t.equal((await app.inject('/')).statusCode, 200, 'and serves the next request')
})

t.test('the response still waits for the COMMIT where the client could tell', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const app = await db.app({ respondBeforeCommit: true })
  const events: string[] = []
  watchCommits(app.db.pool, events)
  app.addHook('onResponse', async () => { events.push('response') })
  const readOnly = { config: { db: { accessMode: 'read only' } } } as const
  app.get('/read-write', async (request) => pid(request))
  app.get('/serializable', { config: { db: { accessMode: 'read only', isolationLevel: 'serializable' } } }, async (request) => pid(request))
  app.get('/after-commit', readOnly, async (request) => {
    request.afterCommit(() => { events.push('afterCommit') })
    return pid(request)
  })
  app.get('/lock', readOnly, async (request) => {
    await sql`SELECT pg_advisory_xact_lock(4242)`.execute(request.db)
    return pid(request)
  })
  app.get('/caught', readOnly, async (request) => {
    await pid(request)
    return sql`SELECT 1 / 0`.execute(request.db).then(() => 'divided', () => 'caught')
  })
  app.get('/not-awaited', readOnly, async (request) => {
    await pid(request)
    sql`SELECT pg_sleep(0.05)`.execute(request.db).catch(() => null)
    return 'left running'
  })
  for (const url of ['/read-write', '/serializable', '/lock', '/not-awaited']) {
    events.length = 0
    t.equal((await app.inject(url)).statusCode, 200, url)
    t.same(events, ['COMMIT sent', 'COMMIT answered', 'response'], url)
  }
  events.length = 0
  t.equal((await app.inject('/after-commit')).statusCode, 200)
  t.same(events, ['COMMIT sent', 'COMMIT answered', 'afterCommit', 'response'], 'the response waits for the callbacks, as documented')
  // A caught failure: COMMIT answers ROLLBACK, and the client hears it, as in any transaction.
  events.length = 0
  const caught = await app.inject('/caught')
  t.equal(caught.statusCode, 500)
  t.equal(caught.json().code, 'FST_DB_SESSION_TRANSACTION_ABORTED')
  t.same(events, ['COMMIT sent', 'COMMIT answered', 'response'])
  // The lock was released before its client had the answer.
  t.same((await db.query('SELECT pg_try_advisory_xact_lock(4242) AS free')).rows[0], { free: true })
  t.equal(app.db.stats().active, 0)
})

t.test('a COMMIT that fails after the response was sent is logged, and its connection destroyed', async (t) => {
  const db = await testDatabase(t)
  const logs = capturedLogs('error')
  const app = await db.app({ maxConnections: 1, respondBeforeCommit: true }, logs.options)
  const events: string[] = []
  const commits = watchCommits(app.db.pool, events)
  let backend = 0
  app.get('/', { config: { db: { accessMode: 'read only' } } }, async (request) => {
    backend = await pid(request)
    return { ok: true }
  })
  app.get('/after', async (request) => ({ pid: await pid(request) }))
  await app.ready()
  commits.hold()
  const response = await app.inject('/')
  t.same(response.json(), { ok: true }, 'what was read reached the client')
  await db.query('SELECT pg_terminate_backend($1)', [backend])
  commits.release()
  await eventually(async () => app.db.stats().active, (active) => active === 0)
  t.same(events, ['COMMIT sent', 'COMMIT failed'])
  t.match(logs.lines, [{ msg: 'fastify-db-session: COMMIT of a read-only transaction failed after its response was sent' }])
  t.equal(app.db.stats().destroyed, 1, 'the connection was not pooled again')
  t.not((await app.inject('/after')).json().pid, backend, 'the next request gets a new connection')
})

t.test('by default, and with respondBeforeCommit on a route set to false, the response waits for the COMMIT', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1 })
  const events: string[] = []
  const commits = watchCommits(app.db.pool, events)
  app.addHook('onResponse', async () => { events.push('response') })
  app.get('/', { config: { db: { accessMode: 'read only' } } }, async (request) => ({ pid: await pid(request) }))
  const off = await db.app({ maxConnections: 1, respondBeforeCommit: true })
  const offEvents: string[] = []
  const offCommits = watchCommits(off.db.pool, offEvents)
  off.addHook('onResponse', async () => { offEvents.push('response') })
  off.get('/', { config: { db: { accessMode: 'read only', respondBeforeCommit: false } } }, async (request) => ({ pid: await pid(request) }))
  for (const [server, seen, watched] of [[app, events, commits], [off, offEvents, offCommits]] as const) {
    await server.ready()
    watched.hold()
    const response = server.inject('/')
    await eventually(async () => seen.length, (n) => n === 1)
    t.same(seen, ['COMMIT sent'], 'no response while the COMMIT is held')
    watched.release()
    t.equal((await response).statusCode, 200)
    t.same(seen, ['COMMIT sent', 'COMMIT answered', 'response'])
  }
  await t.rejects(db.app({ respondBeforeCommit: 'yes' as never }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /respondBeforeCommit must be true \(read only transactions answer before their COMMIT\) or false; instead got 'yes'/ })
})
