// The replicas option and its companions without a standby: checked at registration, pools made
// or taken as the pool option's are, and a "replica" that is not in recovery (the primary itself,
// as in development) measured by its own position.
import { createServer } from 'node:net'
import type { AddressInfo, Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import Fastify from 'fastify'
import pg from 'pg'
import { sql } from 'kysely'
import dbSession from '../lib/index.js'
import { testDatabase } from './helpers/database.js'
import { registrationError } from './helpers/registration-error.js'

t.test('bad replica options fail registration with a message that says what to fix', async (t) => {
  const url = 'postgres://127.0.0.1:1/none'
  const cases: Array<[unknown, RegExp]> = [
    [{ connectionString: url, replicaWaitMillis: 10 }, /replicaWaitMillis only apply with the replicas option, which is not set/],
    [{ connectionString: url, replicas: [], maxReplicaLagMillis: 10, lsnFrom: () => undefined }, /maxReplicaLagMillis, lsnFrom only apply with the replicas option/],
    [{ connectionString: url, replicas: url }, /replicas must be an array of connection strings, pg.PoolConfig objects or pg.Pool instances; instead got 'postgres/],
    [{ connectionString: url, replicas: [42] }, /replicas\[0\] must be a connection string, a pg.PoolConfig or a pg.Pool; instead got '42'/],
    [{ connectionString: url, replicas: [url, ''] }, /replicas\[1\] must be a connection string/],
    [{ connectionString: url, replicas: [null] }, /replicas\[0\] must be a connection string/],
    [{ connectionString: url, replicas: [{ max: 0 }] }, /replicas\[0\]: pool.max must be an integer from 1/],
    [{ connectionString: url, replicas: [{ min: 5 }], maxConnections: 2 }, /pool.min must be at most the pool's max \(2\)/],
    [{ connectionString: url, replicas: [url], replicaWaitMillis: -1 }, /replicaWaitMillis must be an integer number of milliseconds from 0 to 2147483647; instead got '-1'/],
    [{ connectionString: url, replicas: [url], maxReplicaLagMillis: 0 }, /maxReplicaLagMillis must be an integer number of milliseconds from 1/],
    [{ connectionString: url, replicas: [url], replicaCheckMillis: 5 }, /replicaCheckMillis must be an integer number of milliseconds from 10/],
    [{ connectionString: url, replicas: [url], lsnFrom: 'cookie' }, /lsnFrom must be a function \(request\) => string \| undefined; instead got 'cookie'/],
    [{ connectionString: url, replicas: [url], replicaWaitMilis: 10 }, /unknown option 'replicaWaitMilis'/]
  ]
  for (const [options, message] of cases) {
    const error = await registrationError({ startupCheck: false, ...options as object })
    t.equal(error.code, 'FST_DB_SESSION_INVALID_OPTION', message.source)
    t.match(error.message, message)
  }
})

t.test('an empty replicas list is no replicas', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ replicas: [] })
  app.get('/', { config: { db: { accessMode: 'read only' } } }, async (request) => (await sql<{ one: number }>`SELECT 1 AS one`.execute(request.db)).rows[0])
  t.same((await app.inject('/')).json(), { one: 1 })
  t.match(app.db.stats(), { replicas: [], replicaReads: 0, role: 'primary' })
  t.notMatch(app.db.metrics(), /role=/, 'metrics without replicas have no role label')
})

t.test('route and transaction settings of replicas are checked', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ replicas: [db.url] })
  t.throws(() => app.get('/x', { config: { db: { replica: 'no' as never } } }, async () => 'x'), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /route \/x: config.db.replica must be false \(read only work stays on the primary\) or true; instead got 'no'/ })
  await t.rejects(app.db.transaction(async () => 1, { lsn: 'zz' }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /lsn must be a WAL position as the db-session-lsn header carries it \(like '0\/16B3748'\); instead got 'zz'/ })
  await t.rejects(app.db.transaction(async () => 1, { lsn: 7 as never }), { message: /instead got '7'/ })
})

t.test('pools: made ones are sized like the primary and ended at close; a pg.Pool is the user\'s', async (t) => {
  const db = await testDatabase(t)
  const userPool = new pg.Pool({ connectionString: db.url, max: 2 })
  const timedPool = new pg.Pool({ connectionString: db.url, connectionTimeoutMillis: 1000 })
  t.teardown(async () => { await userPool.end(); await timedPool.end() })
  const app = Fastify()
  await app.register(dbSession, { connectionString: db.url, maxConnections: 4, replicas: [db.url, { connectionString: db.url, max: 3, connectionTimeoutMillis: 1000 }, userPool, timedPool] })
  const stats = app.db.stats()
  t.same(stats.replicas.map(({ name, max }) => ({ name, max })), [
    { name: 'default-replica-1', max: 4 },
    { name: 'default-replica-2', max: 3 },
    { name: 'default-replica-3', max: 2 },
    { name: 'default-replica-4', max: 10 }
  ])
  t.ok(stats.replicas.every(({ up, leftOut }) => up && leftOut === null), 'a server not in recovery serves, by its own position')
  for (let i = 0; i < 4; i++) {
    await app.db.transaction(async (trx) => sql`SELECT 1`.execute(trx), { accessMode: 'read only' })
  }
  t.same(app.db.stats().replicas.map(({ replicaReads }) => replicaReads), [1, 1, 1, 1], 'spread over the replicas in turn')
  const listeners = userPool.listenerCount('error')
  await app.close()
  t.equal(userPool.listenerCount('error'), listeners - 1, 'our listener is taken off the user\'s pool')
  t.equal((userPool as unknown as { ending: boolean }).ending, false, 'the user\'s pool is not ended')
  const { rows } = await userPool.query('SELECT 1 AS one')
  t.same(rows, [{ one: 1 }])
})

t.test('a "replica" not in recovery serves reads carrying a position it has reached; lsnFrom reads it from elsewhere', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE notes (body text)')
  const app = await db.app({ replicas: [db.url], replicaWaitMillis: 2000, lsnFrom: (request) => (request.headers.cookie ?? '').match(/lsn=([^;]+)/)?.[1] })
  app.post('/notes', async (request) => {
    await request.db.insertInto('notes').values({ body: 'x' }).execute()
    return 'ok'
  })
  app.get('/notes', { config: { db: { accessMode: 'read only' } } }, async (request) => {
    const { rows } = await sql<{ n: number }>`SELECT count(*)::int AS n FROM notes`.execute(request.db)
    return rows[0]
  })
  const written = await app.inject({ method: 'POST', url: '/notes' })
  const lsn = written.headers['db-session-lsn'] as string
  t.match(lsn, /^[0-9A-F]+\/[0-9A-F]+$/)
  const read = await app.inject({ url: '/notes', headers: { cookie: `lsn=${lsn}` } })
  t.same(read.json(), { n: 1 })
  const stats = app.db.stats()
  t.equal(stats.replicaReads, 1, 'served by the replica')
  t.same(stats.replicaFallbacks, { down: 0, lag: 0, waitTimedOut: 0, ahead: 0 })
  const bad = await app.inject({ url: '/notes', headers: { cookie: 'lsn=nonsense' } })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'FST_DB_SESSION_INVALID_POSITION')
  const header = await app.inject({ url: '/notes', headers: { 'db-session-lsn': 'nonsense' } })
  t.equal(header.statusCode, 200, 'the header is not read when lsnFrom says where the position is')
  const position = await app.db.transaction(async (trx) => (await sql<{ n: number }>`SELECT count(*)::int AS n FROM notes`.execute(trx)).rows[0].n, { accessMode: 'read only', lsn })
  t.equal(position, 1, 'fastify.db.transaction takes a position too')
  t.equal(app.db.stats().replicaReads, 3)
})

t.test('a replica that cannot be reached: reads go to the primary, and the primary\'s failing check is no error', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ replicas: ['postgres://postgres@127.0.0.1:1/none'], acquireTimeoutMillis: 1000 })
  const stats = app.db.stats()
  t.match(stats.replicas[0], { up: false, leftOut: 'down', lagMillis: null, lsn: null })
  const served = await app.db.transaction(async (trx) => (await sql<{ one: number }>`SELECT 1 AS one`.execute(trx)).rows[0].one, { accessMode: 'read only' })
  t.equal(served, 1)
  t.equal(app.db.stats().replicaFallbacks.down, 1)
  t.match(app.db.metrics(), /^fastify_db_session_replica_lag_seconds\{pool="default-replica-1",role="replica"\} 0$/m)
  t.match(app.db.metrics(), /^fastify_db_session_replica_up\{pool="default-replica-1",role="replica"\} 0$/m)

  const unreachable = Fastify()
  t.teardown(() => unreachable.close())
  await unreachable.register(dbSession, { connectionString: 'postgres://postgres@127.0.0.1:1/none', startupCheck: false, replicas: [db.url] })
  t.equal(unreachable.db.stats().replicas[0].up, true, 'registration does not fail on the primary\'s position check')
})

t.test('with replicas, COMMIT carries the position and keeps every rule of COMMIT on the primary', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text CONSTRAINT unique_name UNIQUE DEFERRABLE INITIALLY DEFERRED)')
  const app = await db.app({ replicas: [db.url] })
  app.post('/aborted', async (request) => {
    await request.db.insertInto('items').values({ name: 'before the failure' }).execute()
    await sql`SELECT 1/0`.execute(request.db).catch(() => {})
    return 'ok'
  })
  app.post('/duplicate', async (request) => {
    await request.db.insertInto('items').values([{ name: 'twice' }, { name: 'twice' }]).execute()
    return 'ok'
  })
  app.post('/retried', { config: { db: { retries: 1 } } }, async (request) => {
    await request.db.insertInto('items').values({ name: 'retried route' }).execute()
    return 'ok'
  })
  const aborted = await app.inject({ method: 'POST', url: '/aborted' })
  t.equal(aborted.json().code, 'FST_DB_SESSION_TRANSACTION_ABORTED', 'a failed transaction\'s COMMIT only rolls back, and says so')
  t.notOk(aborted.headers['db-session-lsn'])
  const duplicate = await app.inject({ method: 'POST', url: '/duplicate' })
  t.equal(duplicate.statusCode, 500, 'a COMMIT that fails (a deferred unique constraint) fails the request')
  t.equal(duplicate.json().code, 'FST_DB_SESSION_COMMIT_FAILED')
  t.notOk(duplicate.headers['db-session-lsn'])
  const retried = await app.inject({ method: 'POST', url: '/retried' })
  t.match(retried.headers['db-session-lsn'], /^[0-9A-F]+\/[0-9A-F]+$/, 'a route with retries commits before sending, with its position')
  const { rows } = await db.query('SELECT name FROM items ORDER BY name')
  t.same(rows, [{ name: 'retried route' }])
  t.equal(await db.idleInTransaction(), 0)
  t.match(app.db.stats(), { commits: 1, rollbacks: 2, commitFailures: 2 })
})

t.test('close() while a replica check hangs: no check is scheduled after it', async (t) => {
  const db = await testDatabase(t)
  // Accepts connections and never answers: each check waits for its connect timeout.
  const sockets = new Set<Socket>()
  const silent = createServer((socket) => { sockets.add(socket) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    silent.close()
  })
  const { port } = silent.address() as AddressInfo
  const started = Date.now()
  const app = await db.app({ replicas: [`postgres://postgres@127.0.0.1:${port}/none`], acquireTimeoutMillis: 600, replicaCheckMillis: 10, closeTimeoutMillis: 100 })
  const took = Date.now() - started
  t.equal(app.db.stats().replicas[0].up, false, 'the first check timed out')
  // Its connect has 5000 ms (connectTimeoutMillis' default); the check answers at the acquire deadline.
  t.ok(took < 4000, `registered after the check's 600 ms, not the connect's 5000 (${took} ms)`)
  // The next checks start every 10 ms; they join the read under way instead of connecting again.
  await sleep(100)
  t.equal(sockets.size, 1, 'one read at a time: one connection attempt')
  await app.close()
  const connected = sockets.size
  await sleep(800)
  t.equal(sockets.size, connected, `no check connected after close (${connected} connections in all)`)
})
