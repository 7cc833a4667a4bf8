// Many app instances behind a real PgBouncer in transaction pooling mode: the plugin's finish
// rules and its transaction-local context hold there, and nothing leaks on either side.
import t from 'tap'
import { once } from 'node:events'
import http from 'node:http'
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import { isDeepStrictEqual } from 'node:util'
import { sql } from 'kysely'
import pg from 'pg'
import { eventually, testDatabase } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'
import { pgbouncerBinary, startPgBouncer } from './helpers/pgbouncer.js'
import type { PgBouncer, PoolRow } from './helpers/pgbouncer.js'
import { deferred, itemNames, startScript } from './helpers/util.js'

// Without the binary these tests say so and are skipped on a developer's machine; under CI,
// which installs it, its absence is a failure.
const missing = pgbouncerBinary() === null
if (missing && process.env.CI) throw new Error('CI is set but pgbouncer is not installed: .ci/run must apt-get install -y pgbouncer')
const skip = missing ? 'pgbouncer is not installed (apt-get install -y pgbouncer); PgBouncer tests not run' : false
if (skip !== false) t.comment(skip)

/** Room for the ROLLBACK, the cancel through PgBouncer and a loaded machine, as in close.test.ts. */
const MARGIN = 700

// Six tests, each starting PgBouncer (one starts four app processes): about 30 s on a quiet machine,
// tap's default limit for a whole file.
t.setTimeout(120_000)

/**
 * The `expected` counts of `database`'s one pool in PgBouncer's SHOW POOLS, as soon as they are
 * what is expected, or as they are after 3 s.
 */
async function poolCounts (bouncer: PgBouncer, database: string, expected: Partial<PoolRow>): Promise<Record<string, unknown>> {
  const names = Object.keys(expected) as Array<keyof PoolRow>
  const pick = (rows: PoolRow[]): Record<string, unknown> => rows.length === 1 ? Object.fromEntries(names.map((name) => [name, rows[0][name]])) : { rows }
  return pick(await eventually(() => bouncer.pools(database), (rows) => isDeepStrictEqual(pick(rows), expected)))
}

/**
 * POSTs over a connection of its own that closes after the answer: a keep-alive connection left
 * open would hold `close()` of a listening server until its keepAliveTimeout.
 */
function post (port: number, path: string): Promise<{ status: number, code: string }> {
  return new Promise((resolve, reject) => {
    const request = http.request({ method: 'POST', host: '127.0.0.1', port, path, agent: false, headers: { connection: 'close' } }, (res) => {
      let body = ''
      res.on('data', (chunk) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: JSON.parse(body).code }))
    })
    request.on('error', reject)
    request.end()
  })
}

/** Backends of this database running `pg_sleep` (the helper's own connection excluded). */
async function sleepingBackends (db: TestDatabase): Promise<number> {
  const { rows } = await db.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
    [db.name]
  )
  return rows[0].n
}

t.test('every finish rule holds through PgBouncer in transaction mode', { skip }, async (t) => {
  const db = await testDatabase(t)
  const bouncer = await startPgBouncer(t, db.url, 2)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, CONSTRAINT unique_name UNIQUE (name) DEFERRABLE INITIALLY DEFERRED)')
  const app = await db.app({ connectionString: bouncer.urlFor(db.url), maxConnections: 6 })
  // Added after the plugin, so it runs after the plugin's onSend, as the response is about to
  // leave: what another connection (straight to PostgreSQL) sees then was committed before sending.
  let seenBeforeSending: string[] | null = null
  app.addHook('onSend', async (request) => {
    if (request.url === '/ok') seenBeforeSending = await itemNames(db)
  })
  const insert = (request: { db: any }, name: string) => request.db.insertInto('items').values({ name }).execute()
  app.post('/ok', async (request, reply) => { await insert(request, 'committed'); return reply.code(201).send() })
  app.post('/throw', async (request) => { await insert(request, 'thrown'); throw new Error('boom') })
  app.post('/status', async (request, reply) => { await insert(request, 'error status'); return reply.code(500).send() })
  app.post('/deferred', async (request) => { await insert(request, 'twin'); await insert(request, 'twin'); return { ok: true } })
  app.post('/read-only', { config: { db: { accessMode: 'read only' } } }, async (request) => { await insert(request, 'read only'); return { ok: true } })
  const handlerWaits = deferred()
  const inserted = deferred()
  app.post('/hang-up', async (request) => { await insert(request, 'hung up'); inserted.resolve(); await handlerWaits.promise; return { ok: true } })
  app.post('/timeout', { handlerTimeout: 100 }, async (request) => {
    await insert(request, 'timed out')
    await new Promise((resolve) => setTimeout(resolve, 300))
    return { ok: true }
  })
  app.post('/hijacked', async (request, reply) => {
    await insert(request, 'hijacked')
    reply.hijack()
    reply.raw.writeHead(200)
    reply.raw.end('ok')
  })
  app.post('/hijacked-failure', async (request, reply) => {
    await insert(request, 'hijacked failure')
    reply.hijack()
    reply.raw.writeHead(500)
    reply.raw.end('failed')
  })
  app.post('/late', async (request) => {
    await insert(request, 'on time')
    setTimeout(() => { insert(request, 'late').catch((error: { code: string }) => lateError.resolve(error.code)) }, 50)
    return { ok: true }
  })
  const lateError = deferred<string>()

  t.equal((await app.inject({ method: 'POST', url: '/ok' })).statusCode, 201)
  t.same(seenBeforeSending, ['committed'], 'committed before the response was sent')
  t.equal((await app.inject({ method: 'POST', url: '/throw' })).statusCode, 500)
  t.equal((await app.inject({ method: 'POST', url: '/status' })).statusCode, 500)
  const deferredRes = await app.inject({ method: 'POST', url: '/deferred' })
  t.same([deferredRes.statusCode, deferredRes.json().code], [500, 'FST_DB_SESSION_COMMIT_FAILED'])
  const readOnly = await app.inject({ method: 'POST', url: '/read-only' })
  t.same([readOnly.statusCode, readOnly.json().code], [500, '25006'], 'BEGIN READ ONLY reached the server')
  const timedOut = await app.inject({ method: 'POST', url: '/timeout' })
  t.same([timedOut.statusCode, timedOut.json().code], [503, 'FST_ERR_HANDLER_TIMEOUT'])
  t.equal((await app.inject({ method: 'POST', url: '/hijacked' })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: '/hijacked-failure' })).statusCode, 500)
  // A hijacked reply finishes in onResponse, after its response.
  await eventually(async () => app.db.stats(), (s) => s.commits === 2 && s.rollbacks === 6)
  t.equal((await app.inject({ method: 'POST', url: '/late' })).statusCode, 200)
  t.equal(await lateError.promise, 'FST_DB_SESSION_TRANSACTION_FINISHED', 'a query after the finish never runs in autocommit')

  // fastify.db.transaction: commits when its function resolves, rolls back when it throws.
  const result = await app.db.transaction(async (trx) => {
    await trx.insertInto('items').values({ name: 'transaction resolved' }).execute()
    return 'its result'
  })
  t.equal(result, 'its result')
  const thrown = new Error('rolled back')
  await t.rejects(app.db.transaction(async (trx) => {
    await trx.insertInto('items').values({ name: 'transaction threw' }).execute()
    throw thrown
  }), thrown, 'fastify.db.transaction rethrows its function\'s error')

  // A client hang-up, on a real listening server.
  const address = await app.listen({ host: '127.0.0.1', port: 0 })
  const socket = connect(Number(new URL(address).port), '127.0.0.1')
  socket.on('error', () => {})
  socket.write('POST /hang-up HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n')
  await inserted.promise
  socket.destroy()
  // Rolled back at the hang-up, while the handler still waits (7 rollbacks came before).
  t.equal((await eventually(async () => app.db.stats(), (s) => s.rollbacks === 8)).rollbacks, 8)
  handlerWaits.resolve()

  await new Promise((resolve) => setTimeout(resolve, 300)) // the timed-out handler's own end
  t.same(await itemNames(db), ['committed', 'hijacked', 'on time', 'transaction resolved'],
    'only what the rules commit is there: not the throw, the error status, the failed COMMIT, the read-only, the timeout, the failed hijacked reply, the throwing transaction or the hang-up')
  const stats = await eventually(async () => app.db.stats(), (s) => s.active === 0)
  t.match(stats, { commits: 4, rollbacks: 8, commitFailures: 1, active: 0 })
  t.equal(await db.idleInTransaction(), 0, 'no server connection is left inside a transaction')
  const idle = { cl_waiting: 0, sv_active: 0 }
  t.same(await poolCounts(bouncer, db.name, idle), idle, 'PgBouncer has no client waiting and no server connection busy')
})

t.test('close() through PgBouncer: a request stuck in pg_sleep(30) is canceled in PostgreSQL, and close() returns in time', { skip }, async (t) => {
  const closeTimeout = 300
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const bouncer = await startPgBouncer(t, db.url, 2)
  const app = await db.app({ connectionString: bouncer.urlFor(db.url), closeTimeoutMillis: closeTimeout })
  app.post('/sleep', async (request) => {
    await request.db.insertInto('items').values({ name: 'sleeper' }).execute()
    await sql`SELECT pg_sleep(30)`.execute(request.db)
    return { ok: true }
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const response = post((app.server.address() as AddressInfo).port, '/sleep')
  t.equal(await eventually(() => sleepingBackends(db), (n) => n === 1), 1, 'the request sleeps inside its transaction')

  const started = Date.now()
  await app.close()
  const closeMillis = Date.now() - started
  t.ok(closeMillis < closeTimeout + MARGIN, `close() returned in ${closeMillis} ms (closeTimeoutMillis ${closeTimeout})`)
  // Closing the socket to PgBouncer does not stop the statement: PgBouncer drops its server
  // connection, and the backend sleeps on for the rest of the 30 s. The plugin's cancel, with the
  // connection's own key (PgBouncer's, which it maps to the server's), does.
  const sleepers = await eventually(() => sleepingBackends(db), (n) => n === 0, 1500)
  const stoppedMillis = Date.now() - started
  t.equal(sleepers, 0, `pg_sleep stopped in PostgreSQL ${stoppedMillis} ms after close() began`)
  t.comment(`close(): returned after ${closeMillis} ms; pg_sleep gone from pg_stat_activity after ${stoppedMillis} ms`)
  t.same(await response, { status: 503, code: 'FST_DB_SESSION_CLOSING' }, 'the stuck request was answered')
  t.same(await itemNames(db), [], 'its row is absent')
  const stats = app.db.stats()
  t.match(stats, { leaks: 1, commits: 0, active: 0, total: 0 })
  t.equal(await db.idleInTransaction(), 0)
  const empty = { cl_active: 0, cl_waiting: 0, sv_active: 0 }
  t.same(await poolCounts(bouncer, db.name, empty), empty, 'PgBouncer has no client and no busy server connection left')
})

t.test('leakTimeoutMillis through PgBouncer: a statement still running at the limit is canceled in PostgreSQL', { skip }, async (t) => {
  const limit = 300
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const bouncer = await startPgBouncer(t, db.url, 2)
  const app = await db.app({ connectionString: bouncer.urlFor(db.url), leakTimeoutMillis: limit }, { logger: { level: 'silent' } })
  app.post('/sleepy', async (request) => {
    await request.db.insertInto('items').values({ name: 'sleepy' }).execute()
    await sql`SELECT pg_sleep(10)`.execute(request.db)
    return { ok: true }
  })
  const started = Date.now()
  const res = await app.inject({ method: 'POST', url: '/sleepy' })
  const answeredMillis = Date.now() - started
  t.same([res.statusCode, res.json().code], [500, 'FST_DB_SESSION_HOLD_TIMEOUT'])
  t.ok(answeredMillis >= limit && answeredMillis < limit + MARGIN, `answered ${answeredMillis} ms after the request began (limit ${limit} ms), not after the 10 s sleep`)
  const sleepers = await eventually(() => sleepingBackends(db), (n) => n === 0, 1500)
  const stoppedMillis = Date.now() - started
  t.equal(sleepers, 0, `pg_sleep stopped in PostgreSQL ${stoppedMillis} ms after the request began`)
  t.comment(`leakTimeoutMillis ${limit}: answered 500 after ${answeredMillis} ms; pg_sleep gone from pg_stat_activity after ${stoppedMillis} ms`)
  t.same(await itemNames(db), [], 'nothing was committed')
  t.match(app.db.stats(), { leaks: 1, commits: 0, active: 0 })
  t.equal(await db.idleInTransaction(), 0)
  const idle = { cl_waiting: 0, sv_active: 0 }
  t.same(await poolCounts(bouncer, db.name, idle), idle, 'PgBouncer has no client waiting and no server connection busy')
})

t.test('in one app: PgBouncer\'s query_wait_timeout at BEGIN is 503 FST_DB_SESSION_ACQUIRE_TIMEOUT, counted, and the app recovers', { skip }, async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  // One server connection, held 2.5 s by the first request: the second waits past 1 s at its BEGIN.
  const bouncer = await startPgBouncer(t, db.url, 1, { query_wait_timeout: 1 })
  const app = await db.app({ connectionString: bouncer.urlFor(db.url) }, { logger: { level: 'silent' } })
  const holding = deferred()
  app.post('/hold', async (request) => {
    await request.db.insertInto('items').values({ name: 'held' }).execute()
    holding.resolve()
    await sql`SELECT pg_sleep(2.5)`.execute(request.db)
    return { ok: true }
  })
  app.post('/quick', async (request) => {
    await request.db.insertInto('items').values({ name: 'quick' }).execute()
    return { ok: true }
  })
  const held = app.inject({ method: 'POST', url: '/hold' })
  await holding.promise
  const started = Date.now()
  const refused = await app.inject({ method: 'POST', url: '/quick' })
  const waitedMillis = Date.now() - started
  t.equal(refused.statusCode, 503)
  t.equal(refused.json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
  t.match(refused.json().message, /PgBouncer's query_wait_timeout/)
  t.equal(refused.headers['retry-after'], '1')
  t.ok(waitedMillis >= 900 && waitedMillis < 2500, `refused after PgBouncer's wait (${waitedMillis} ms), before the holder finished`)
  t.equal((await held).statusCode, 200)
  t.match(app.db.stats(), { acquireTimeouts: 1, destroyed: 1, active: 0 }, 'counted as an acquire timeout; the connection PgBouncer closed was destroyed')
  t.equal((await app.inject({ method: 'POST', url: '/quick' })).statusCode, 200, 'the next request is served')
  t.same((await itemNames(db)).sort(), ['held', 'quick'], 'the refused request wrote nothing')
})

t.test('the tenant context holds through PgBouncer and never reaches the next transaction', { skip }, async (t) => {
  const db = await testDatabase(t)
  // One server connection behind many client connections: every transaction shares it.
  const bouncer = await startPgBouncer(t, db.url, 1)
  const url = bouncer.urlFor(db.url)
  const app = await db.app({
    connectionString: url,
    maxConnections: 8,
    context: { 'app.tenant_id': (request) => request.headers['x-tenant'] as string | undefined }
  })
  // Readers that set no context: they see whatever an earlier transaction left on the server connection.
  const plain = await db.app({ connectionString: url, maxConnections: 4 })
  type Reading = { value: string | null, leaky: string | null, pid: number }
  const read = (executor: any) => sql<Reading>`
    SELECT current_setting('app.tenant_id', true) AS value, current_setting('app.leaky', true) AS leaky,
      pg_backend_pid() AS pid`.execute(executor).then((r) => r.rows[0])
  for (const instance of [app, plain]) {
    instance.get('/', async (request) => {
      const first = await read(request.db)
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 10))
      const again = await read(request.db)
      return { first: first.value, again: again.value, pid: first.pid }
    })
  }
  plain.get('/read', async (request) => read(request.db))
  /** What each reader without a context sees, and on which server connection. */
  const readers = async (): Promise<Record<string, Reading>> => ({
    'fastify.db.transaction without context': await app.db.transaction((trx) => read(trx)),
    'fastify.db.kysely, autocommit': await read(app.db.kysely),
    'a request of an app without the context option': (await plain.inject('/read')).json() as Reading
  })
  const empty = (value: string | null) => value === '' || value === null

  // Tenants, requests with no tenant header, and readers without context, all at once.
  const requests = Array.from({ length: 80 }, (_, i) => (i % 4 === 3 ? 'plain' : i % 5 === 0 ? undefined : `tenant-${i % 7}`))
  const answers = await Promise.all(requests.map((tenant) => tenant === 'plain'
    ? plain.inject('/').then((res) => res.json())
    : app.inject({ url: '/', headers: tenant === undefined ? {} : { 'x-tenant': tenant } }).then((res) => res.json())))
  const wrong: string[] = []
  for (const [i, answer] of answers.entries()) {
    const tenant = requests[i]
    const ok = tenant === 'plain'
      ? empty(answer.first) && empty(answer.again)
      : answer.first === (tenant ?? '') && answer.again === (tenant ?? '')
    if (!ok) wrong.push(`request ${i} (${tenant ?? 'no tenant'}) saw '${answer.first}'/'${answer.again}'`)
  }
  t.same(wrong, [], 'every request saw exactly its own tenant, the empty setting when it had none, and readers without context saw none')
  t.equal(new Set(answers.map((a) => a.pid)).size, 1, 'all 80 transactions ran on one server connection')

  // After a tenant's request, on the same server connection, readers that set nothing see nothing.
  const acme = (await app.inject({ url: '/', headers: { 'x-tenant': 'acme' } })).json()
  t.equal(acme.first, 'acme')
  for (const [reader, seen] of Object.entries(await readers())) {
    t.ok(empty(seen.value), `${reader} sees no tenant after acme's request (saw ${JSON.stringify(seen.value)})`)
    t.equal(seen.pid, acme.pid, `${reader} ran on acme's server connection`)
  }

  // What the plugin avoids: a session-level SET, made by another client of the same PgBouncer,
  // outlives its transaction on the shared server connection, and the same readers do see it.
  const other = new pg.Client({ connectionString: url })
  await other.connect()
  await other.query("SET app.leaky = 'from an earlier client'")
  await other.end()
  await app.inject({ url: '/', headers: { 'x-tenant': 'acme' } })
  for (const [reader, seen] of Object.entries(await readers())) {
    t.equal(seen.leaky, 'from an earlier client', `${reader}: a session-level SET does leak through transaction pooling`)
    t.ok(empty(seen.value), `${reader}: while the plugin's transaction-local tenant does not (saw ${JSON.stringify(seen.value)})`)
  }
})

t.test('four app processes share a PgBouncer smaller than their pools: each answer is a success or the coded overload error, nothing leaked', { skip }, async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE writes (id serial PRIMARY KEY, asked text NOT NULL, seen text, instance int NOT NULL)')
  const serverPool = 4
  const appPool = 10
  // A client waiting longer than 1 s for a server connection gets PgBouncer's query_wait_timeout
  // (checked a few times a second), which the plugin answers as FST_DB_SESSION_ACQUIRE_TIMEOUT.
  const bouncer = await startPgBouncer(t, db.url, serverPool, { query_wait_timeout: 1 })
  const instances = await Promise.all(Array.from({ length: 4 }, () =>
    startScript(t, 'test/fixtures/tenant-app.ts', { DATABASE_URL: bouncer.urlFor(db.url), POOL_SIZE: String(appPool), HOLD_MILLIS: '300' })))
  const tenants = ['acme', 'globex', 'initech', 'umbrella', 'hooli']
  const workers = 6
  const rounds = 6
  let ok = 0
  let overloaded = 0
  const refusedAfter: number[] = []
  const wrong: string[] = []
  // Each success holds a server connection for 300 ms: 4 of them serve about 13 requests a second,
  // while 24 clients ask at once, so some wait past query_wait_timeout.
  const loading = new AbortController()
  let mostBackends = 0
  const sampler = (async () => {
    while (!loading.signal.aborted) {
      let backends = await db.connections()
      // A server connection PgBouncer has just closed is still listed while its backend exits,
      // beside the one that replaces it: a count over the pool counts only if it holds 50 ms later.
      if (backends > serverPool) {
        await new Promise((resolve) => setTimeout(resolve, 50))
        backends = Math.min(backends, await db.connections())
      }
      mostBackends = Math.max(mostBackends, backends)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  })()
  const started = Date.now()
  await Promise.all(instances.flatMap(({ port }) => Array.from({ length: workers }, async (_, worker) => {
    for (let i = 0; i < rounds; i++) {
      const tenant = tenants[(worker + i) % tenants.length]
      const asked = Date.now()
      const res = await fetch(`http://127.0.0.1:${port}/write`, { method: 'POST', headers: { 'x-tenant': tenant }, signal: AbortSignal.timeout(30_000) })
      const body = await res.json()
      const retryAfter = res.headers.get('retry-after')
      if (res.status === 200 && body.seen === tenant) {
        ok++
      } else if (res.status === 503 && body.code === 'FST_DB_SESSION_ACQUIRE_TIMEOUT' && retryAfter === '1' && /query_wait_timeout/.test(body.message)) {
        overloaded++
        refusedAfter.push(Date.now() - asked)
      } else {
        wrong.push(`${res.status} ${JSON.stringify(body)} (retry-after ${retryAfter}) for ${tenant}`)
      }
    }
  })))
  const loadMillis = Date.now() - started
  loading.abort()
  await sampler
  const total = 4 * workers * rounds
  t.same(wrong, [], 'every answer was a 200 with its own tenant, or a 503 FST_DB_SESSION_ACQUIRE_TIMEOUT from query_wait_timeout with Retry-After: 1')
  t.equal(ok + overloaded, total)
  t.ok(ok > 0, `${ok} requests succeeded`)
  t.ok(overloaded > 0, `${overloaded} requests were refused as overloaded`)
  t.ok(mostBackends <= serverPool, `PostgreSQL never saw more than PgBouncer's ${serverPool} server connections during the load (most: ${mostBackends})`)
  const { rows } = await db.query('SELECT count(*)::int AS n, count(*) FILTER (WHERE seen IS DISTINCT FROM asked)::int AS mismatched, count(DISTINCT instance)::int AS instances FROM writes')
  t.same(rows[0], { n: ok, mismatched: 0, instances: 4 }, 'one row per success, each written under its own tenant, from all four instances')

  // Nothing leaked, on PostgreSQL's side, PgBouncer's and each app's.
  const idleInTransaction = await db.idleInTransaction()
  t.equal(idleInTransaction, 0, 'no backend idle in a transaction')
  const backends = await db.connections()
  t.ok(backends <= serverPool, `PostgreSQL has at most PgBouncer's ${serverPool} server connections (${backends})`)
  const idle = { cl_waiting: 0, sv_active: 0 }
  t.same(await poolCounts(bouncer, db.name, idle), idle, 'PgBouncer: no client waiting, no server connection left busy')
  const [pool] = await bouncer.pools(db.name)
  const stats = await Promise.all(instances.map(async ({ port }) => (await fetch(`http://127.0.0.1:${port}/stats`)).json()))
  t.same(stats.map((s) => [s.active, s.waiting, s.leaks]), instances.map(() => [0, 0, 0]), 'each app: no connection checked out, no caller waiting, no leak')
  const sum = (name: string) => stats.reduce((n, s) => n + s[name], 0)
  t.equal(sum('commits'), ok, 'the apps counted a commit per success')
  t.equal(sum('acquireTimeouts'), overloaded, 'and an acquire timeout per 503')

  // Each app closes on SIGTERM, and exits 0 only if its pool had nothing checked out or leaked.
  const exits = await Promise.all(instances.map(async ({ server }) => {
    const exited = once(server, 'exit')
    server.kill('SIGTERM')
    const [code] = await exited
    return code
  }))
  t.same(exits, [0, 0, 0, 0], 'every app process exited 0 after closing')
  const empty = { cl_active: 0, cl_waiting: 0, sv_active: 0 }
  const after = await poolCounts(bouncer, db.name, empty)
  t.same(after, empty, 'with the apps gone, PgBouncer has no client left')
  t.equal(await db.idleInTransaction(), 0)
  t.comment(`4 processes × ${workers} clients × ${rounds} = ${total} requests in ${loadMillis} ms: ${ok} × 200, ${overloaded} × 503 FST_DB_SESSION_ACQUIRE_TIMEOUT; ` +
    `apps' pools ${4 * appPool} connections, PgBouncer's server pool ${serverPool}; most PostgreSQL backends during the load ${mostBackends}; ` +
    `503s answered ${Math.min(...refusedAfter)} to ${Math.max(...refusedAfter)} ms after they were sent`)
  t.comment(`afterwards: pg_stat_activity ${backends} backends, ${idleInTransaction} idle in transaction; SHOW POOLS ` +
    `cl_active ${pool.cl_active} (the apps' idle connections), cl_waiting ${pool.cl_waiting}, sv_active ${pool.sv_active}, sv_idle ${pool.sv_idle}; apps' active ${sum('active')}, leaks ${sum('leaks')}; ` +
    `exits ${exits.join(',')}; SHOW POOLS after the apps exited: cl_active ${after.cl_active}, cl_waiting ${after.cl_waiting}`)
})
