// Read replicas on real streaming replication: read only work runs on a hot standby, writes on
// the primary; a write's commit position comes back in db-session-lsn, and a read that carries it
// never sees older data (it waits for the standby, or the primary serves it); a standby that lags
// or goes away is left out, and no request fails for it.
import t from 'tap'
import type { Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import { sql } from 'kysely'
import dbSession from '../lib/index.js'
import type { FastifyDbSessionOptions } from '../index.js'
import { eventually } from './helpers/database.js'
import { pgbouncerBinary, startPgBouncer } from './helpers/pgbouncer.js'
import { startReplicationPair } from './helpers/standby.js'

t.setTimeout(240_000)

const pair = await startReplicationPair(t)
const { primary, standby } = pair
await primary.query('CREATE DATABASE app')
await primary.query('CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)', [], 'app')
await pair.caughtUp()

const LSN = /^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/

/**
 * An app on the pair: POST /notes writes (read write), GET /notes reads (read only), GET
 * /notes/primary reads on the primary (replica: false); each read says where it ran.
 */
async function app (t: Test, options: Partial<FastifyDbSessionOptions> = {}): Promise<FastifyInstance> {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, {
    connectionString: primary.url('app'),
    replicas: [standby.url('app')],
    replicaCheckMillis: 20,
    maxReplicaLagMillis: 60_000,
    ...options
  } as FastifyDbSessionOptions)
  const read = async (request: any) => {
    const { rows: [row] } = await sql<{ standby: boolean, bodies: string[] }>`SELECT pg_is_in_recovery() AS standby, coalesce((SELECT array_agg(body ORDER BY id) FROM notes), '{}') AS bodies`.execute(request.db)
    return row
  }
  app.post('/notes', { config: { db: { accessMode: 'read write' } } }, async (request) => {
    await request.db.insertInto('notes').values({ body: (request.body as { body: string }).body }).execute()
    return { ok: true }
  })
  app.get('/notes', { config: { db: { accessMode: 'read only' } } }, read)
  app.get('/notes/primary', { config: { db: { accessMode: 'read only', replica: false } } }, read)
  app.get('/write-anyway', { config: { db: { accessMode: 'read only' } } }, async (request) => {
    await request.db.insertInto('notes').values({ body: 'from a read only route' }).execute()
    return { ok: true }
  })
  app.get('/plugin-default', read)
  return app
}

/** Pauses the standby's replay for the test, resumed at its end whatever happens. */
async function pauseReplay (t: Test): Promise<() => Promise<void>> {
  await standby.query('SELECT pg_wal_replay_pause()')
  const resume = async () => { await standby.query('SELECT pg_wal_replay_resume()') }
  t.teardown(resume)
  return resume
}

async function write (app: FastifyInstance, body: string): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/notes', payload: { body } })
  if (res.statusCode !== 200) throw new Error(`POST /notes answered ${res.statusCode}: ${res.body}`)
  return res.headers['db-session-lsn'] as string
}

t.test('read only work runs on the standby, everything else on the primary', async (t) => {
  const server = await app(t)
  const onStandby = await server.inject('/notes')
  t.equal(onStandby.json().standby, true, 'a read only route runs on the standby')
  t.equal((await server.inject('/notes/primary')).json().standby, false, 'replica: false keeps it on the primary')
  t.equal((await server.inject('/plugin-default')).json().standby, false, 'a route without an access mode runs on the primary')
  const inTransaction = await server.db.transaction(async (trx) => (await sql<{ standby: boolean }>`SELECT pg_is_in_recovery() AS standby`.execute(trx)).rows[0].standby, { accessMode: 'read only' })
  t.equal(inTransaction, true, 'fastify.db.transaction with accessMode read only runs on the standby')
  const pinned = await server.db.transaction(async (trx) => (await sql<{ standby: boolean }>`SELECT pg_is_in_recovery() AS standby`.execute(trx)).rows[0].standby, { accessMode: 'read only', replica: false })
  t.equal(pinned, false)
  const stats = server.db.stats()
  t.equal(stats.role, 'primary')
  t.equal(stats.replicaReads, 2)
  t.equal(stats.replicas.length, 1)
  t.match(stats.replicas[0], { role: 'replica', name: 'default-replica-1', up: true, leftOut: null, acquires: 2, commits: 2 })
  t.match(stats.replicas[0].lsn, LSN)
  t.equal(stats.acquires, 3, 'the primary served the other three')
})

t.test('the plugin default accessMode read only sends every route without its own to the standby', async (t) => {
  const server = await app(t, { accessMode: 'read only' })
  t.equal((await server.inject('/plugin-default')).json().standby, true)
  await write(server, 'a write on a read write route')
  t.equal((await server.inject('/notes/primary')).json().standby, false)
})

t.test('a write on a read only route fails with PostgreSQL\'s read-only error and is rolled back', async (t) => {
  const server = await app(t)
  const res = await server.inject('/write-anyway')
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, '25006', 'read_only_sql_transaction')
  const { rows } = await primary.query("SELECT count(*)::int AS n FROM notes WHERE body = 'from a read only route'", [], 'app')
  t.equal(rows[0].n, 0)
  t.equal(server.db.stats().replicas[0].rollbacks, 1, 'rolled back on the standby')
  t.equal(await eventually(async () => (await standby.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'app' AND state LIKE 'idle in transaction%'")).rows[0].n, (n) => n === 0), 0)
})

t.test('a write that commits sends its position in db-session-lsn; reads and read only routes send none', async (t) => {
  const server = await app(t)
  const lsn = await write(server, 'positioned')
  t.match(lsn, LSN)
  const { rows: [{ reached }] } = await primary.query('SELECT pg_current_wal_insert_lsn() >= $1::pg_lsn AS reached', [lsn])
  t.equal(reached, true, 'a position the primary has reached')
  t.notOk((await server.inject('/notes')).headers['db-session-lsn'])
  t.notOk((await server.inject('/plugin-default')).headers['db-session-lsn'], 'a read write unit that wrote nothing')
})

t.test('with replay paused: a read without the header is stale, one with it never is', async (t) => {
  const server = await app(t, { replicaWaitMillis: 100 })
  const resume = await pauseReplay(t)
  const lsn = await write(server, 'while paused')

  const stale = (await server.inject('/notes')).json()
  t.equal(stale.standby, true, 'without the header the standby serves')
  t.notOk(stale.bodies.includes('while paused'), 'and its data is older than the write: the routing is real')

  const fresh = (await server.inject({ url: '/notes', headers: { 'db-session-lsn': lsn } })).json()
  t.equal(fresh.standby, false, 'the standby has not replayed the write: the primary serves after replicaWaitMillis')
  t.ok(fresh.bodies.includes('while paused'), 'the write is seen')
  const stats = server.db.stats()
  t.equal(stats.replicaFallbacks.waitTimedOut, 1)
  t.equal(stats.replicaWaitSeconds.count, 1)
  // Node's timers may fire a fraction of a millisecond before performance.now() says they are due.
  t.ok(stats.replicaWaitSeconds.sum >= 0.09, `waited about replicaWaitMillis: ${stats.replicaWaitSeconds.sum} s`)
  await resume()
})

t.test('with replay paused, a read with the header waits for the replay to resume and is served by the standby', async (t) => {
  const server = await app(t, { replicaWaitMillis: 20_000 })
  const resume = await pauseReplay(t)
  const lsn = await write(server, 'seen after resume')
  const reading = [1, 2].map(() => server.inject({ url: '/notes', headers: { 'db-session-lsn': lsn } }))
  // The reads are waiting (nothing else can have answered them): then replay resumes.
  await sleep(300)
  t.equal(server.db.stats().replicaWaitSeconds.count, 0, 'still waiting')
  await resume()
  for (const answer of await Promise.all(reading)) {
    const row = answer.json()
    t.equal(row.standby, true, 'served by the standby once it replayed the write')
    t.ok(row.bodies.includes('seen after resume'), 'and the write is there')
  }
  const stats = server.db.stats()
  t.same(stats.replicaFallbacks, { down: 0, lag: 0, waitTimedOut: 0, ahead: 0 })
  t.equal(stats.replicaWaitSeconds.count, 2)
  t.comment(`two reads waited ${(stats.replicaWaitSeconds.sum / 2).toFixed(3)} s on average for the replay to resume`)
})

t.test('row by row: every read carrying a write\'s position sees that write, with replay paused and resumed', async (t) => {
  const server = await app(t, { replicaWaitMillis: 50 })
  const resume = await pauseReplay(t)
  for (let i = 0; i < 5; i++) {
    const body = `row ${i}`
    const lsn = await write(server, body)
    const row = (await server.inject({ url: '/notes', headers: { 'db-session-lsn': lsn } })).json()
    t.ok(row.bodies.includes(body), `${body} is seen (served by the ${row.standby ? 'standby' : 'primary'})`)
    if (i === 2) await resume()
  }
  const stats = server.db.stats()
  t.comment(`fell back ${stats.replicaFallbacks.waitTimedOut} times (wait timed out), standby served ${stats.replicaReads}, waits ${stats.replicaWaitSeconds.count} totalling ${stats.replicaWaitSeconds.sum.toFixed(3)} s`)
  t.ok(stats.replicaFallbacks.waitTimedOut >= 3, 'the paused writes were read from the primary')
})

t.test('a malformed position is refused with a 400; one ahead of the primary\'s is served by the primary', async (t) => {
  const server = await app(t)
  const bad = await server.inject({ url: '/notes', headers: { 'db-session-lsn': 'not a position' } })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'FST_DB_SESSION_INVALID_POSITION')
  const long = await server.inject({ url: '/notes', headers: { 'db-session-lsn': '0/' + 'A'.repeat(100) } })
  t.equal(long.statusCode, 400)
  t.match(long.json().message, /instead got '0\/A{38}…'$/, 'a long value is cut in the message')
  const ahead = await server.inject({ url: '/notes', headers: { 'db-session-lsn': 'FFFFFFFF/0' } })
  t.equal(ahead.statusCode, 200)
  t.equal(ahead.json().standby, false)
  t.equal(server.db.stats().replicaFallbacks.ahead, 1)
})

t.test('a standby that lags more than maxReplicaLagMillis is left out until it catches up', async (t) => {
  const server = await app(t, { maxReplicaLagMillis: 200 })
  const resume = await pauseReplay(t)
  await write(server, 'makes the standby lag')
  await eventually(async () => server.db.stats().replicas[0].leftOut, (leftOut) => leftOut === 'lag', 10_000)
  const row = (await server.inject('/notes')).json()
  t.equal(row.standby, false, 'the primary serves while the standby lags')
  t.equal(server.db.stats().replicaFallbacks.lag, 1)
  await resume()
  t.equal(await eventually(async () => server.db.stats().replicas[0].leftOut, (leftOut) => leftOut === null, 10_000), null, 'back once it caught up')
  t.equal((await server.inject('/notes')).json().standby, true)
})

t.test('a standby stopped mid-run: reads keep succeeding from the primary, and go back to it once it restarts', async (t) => {
  const server = await app(t)
  t.equal((await server.inject('/notes')).json().standby, true)
  await standby.stop()
  t.teardown(() => standby.start())
  for (let i = 0; i < 10; i++) {
    const res = await server.inject('/notes')
    t.equal(res.statusCode, 200, `read ${i} succeeded`)
    t.equal(res.json().standby, false)
  }
  const stats = server.db.stats()
  t.equal(stats.replicas[0].up, false)
  t.ok(stats.replicaFallbacks.down >= 10, 'each counted as a fallback for a replica down')
  await standby.start()
  t.equal(await eventually(async () => server.db.stats().replicas[0].up, (up) => up, 10_000), true)
  t.equal((await server.inject('/notes')).json().standby, true, 'the standby serves again')
})

t.test('metrics() labels each pool with its role', async (t) => {
  const server = await app(t)
  await server.inject('/notes')
  const text = server.db.metrics()
  t.match(text, /^fastify_db_session_commits_total\{pool="default",role="primary"\} \d+$/m)
  t.match(text, /^fastify_db_session_commits_total\{pool="default-replica-1",role="replica"\} 1$/m)
  t.match(text, /^fastify_db_session_replica_reads_total\{pool="default-replica-1",role="replica"\} 1$/m)
  t.match(text, /^fastify_db_session_replica_fallbacks_total\{pool="default",role="primary",reason="down"\} 0$/m)
  t.match(text, /^fastify_db_session_replica_up\{pool="default-replica-1",role="replica"\} 1$/m)
  t.match(text, /^fastify_db_session_replica_serving\{pool="default-replica-1",role="replica"\} 1$/m)
  t.match(text, /^fastify_db_session_replica_lag_seconds\{pool="default-replica-1",role="replica"\} [\d.]+$/m)
  t.match(text, /^fastify_db_session_replica_wait_seconds_count\{pool="default",role="primary"\} 0$/m)
})

t.test('a replica that fails to connect before its next check: the read goes to the primary, and the replica is left out', async (t) => {
  const server = await app(t, { replicaCheckMillis: 600_000 })
  t.equal(server.db.stats().replicas[0].up, true)
  await standby.stop()
  t.teardown(() => standby.start())
  const res = await server.inject('/notes')
  t.equal(res.statusCode, 200)
  t.equal(res.json().standby, false)
  const stats = server.db.stats()
  t.equal(stats.replicaFallbacks.down, 1)
  t.equal(stats.replicas[0].up, false, 'left out at once, not at the next check')
  await standby.start()
})

t.test('a primary that turns out to be a standby: a COMMIT whose position cannot be read still counts as committed', async (t) => {
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(dbSession, { connectionString: standby.url('app'), replicas: [standby.url('app')] })
  server.get('/', async (request) => (await sql<{ standby: boolean }>`SELECT pg_is_in_recovery() AS standby`.execute(request.db)).rows[0])
  const res = await server.inject('/')
  t.equal(res.statusCode, 200)
  t.same(res.json(), { standby: true })
  t.notOk(res.headers['db-session-lsn'])
  t.equal(server.db.stats().commits, 1)
})

t.test('close() answers a read waiting for the replay at once: it fails as closing, without waiting out replicaWaitMillis', async (t) => {
  const server = await app(t, { replicaWaitMillis: 60_000 })
  const resume = await pauseReplay(t)
  const lsn = await write(server, 'never replayed before close')
  const reading = server.inject({ url: '/notes', headers: { 'db-session-lsn': lsn } })
  await sleep(200)
  await server.close()
  const res = await reading
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_DB_SESSION_CLOSING')
  await resume()
})

t.test('through PgBouncer in transaction mode (one per server): reads on the standby, read-your-writes held', { skip: pgbouncerBinary() === null ? 'pgbouncer is not installed (apt-get install -y pgbouncer)' : false }, async (t) => {
  // The pair trusts 127.0.0.1; PgBouncer's database line wants a password all the same.
  const withPassword = (url: string): string => url.replace('postgres@', 'postgres:trusted@')
  const toPrimary = await startPgBouncer(t, withPassword(primary.url('app')), 2)
  const toStandby = await startPgBouncer(t, withPassword(standby.url('app')), 2)
  const server = await app(t, { connectionString: toPrimary.urlFor(primary.url('app')), replicas: [toStandby.urlFor(standby.url('app'))], replicaWaitMillis: 100 })
  t.equal((await server.inject('/notes')).json().standby, true, 'a read only route runs on the standby, through its PgBouncer')
  const resume = await pauseReplay(t)
  const lsn = await write(server, 'through pgbouncer')
  t.match(lsn, LSN, 'the position comes back through PgBouncer')
  t.notOk((await server.inject('/notes')).json().bodies.includes('through pgbouncer'), 'without the header: the standby\'s older data')
  const fresh = (await server.inject({ url: '/notes', headers: { 'db-session-lsn': lsn } })).json()
  t.same([fresh.standby, fresh.bodies.includes('through pgbouncer')], [false, true], 'with it: the primary, after the wait')
  await resume()
  const replayed = await eventually(async () => (await server.inject({ url: '/notes', headers: { 'db-session-lsn': lsn } })).json(), (row) => row.standby === true)
  t.same([replayed.standby, replayed.bodies.includes('through pgbouncer')], [true, true], 'and the standby once it replayed the write')
  t.equal(server.db.stats().replicas[0].up, true)
})
