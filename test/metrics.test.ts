// Pool figures: histograms and counters in stats(), the Prometheus text of metrics(), the
// opt-in metrics route, and one exposition for several pools.
import t from 'tap'
import type { Test } from 'tap'
import Fastify from 'fastify'
import dbSession, { combineMetrics } from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'

/** Checks the exposition format line by line; returns each sample's value by its full name and labels. */
function parseExposition (t: Test, text: string): Map<string, number> {
  const samples = new Map<string, number>()
  const described = new Map<string, { help: boolean, type: string }>()
  t.ok(text.endsWith('\n'), 'the exposition ends with a line feed')
  for (const line of text.trimEnd().split('\n')) {
    const comment = /^# (HELP|TYPE) ([a-z_:][a-z0-9_:]*) (.+)$/.exec(line)
    if (comment !== null) {
      const [, kind, name, rest] = comment
      const entry = described.get(name) ?? { help: false, type: '' }
      if (kind === 'HELP') {
        if (entry.help) t.fail(`a second HELP line for ${name}`)
        entry.help = true
      } else {
        if (entry.type !== '') t.fail(`a second TYPE line for ${name}`)
        entry.type = rest
      }
      described.set(name, entry)
      continue
    }
    const sample = /^([a-z_:][a-z0-9_:]*)\{((?:[a-z_]+="(?:[^"\\]|\\.)*",?)*)\} (-?[0-9.e+-]+|NaN|\+Inf)$/.exec(line)
    if (sample === null) {
      t.fail(`not a valid sample line: ${line}`)
      continue
    }
    const [, name, labels, value] = sample
    const family = [...described.keys()].find((metric) => name === metric || (described.get(metric)?.type === 'histogram' && /^_(bucket|sum|count)$/.test(name.slice(metric.length)) && name.startsWith(metric)))
    if (family === undefined) t.fail(`${name} has no HELP/TYPE before it`)
    samples.set(`${name}{${labels}}`, Number(value))
  }
  for (const [name, { help, type }] of described) {
    if (!help || !['counter', 'gauge', 'histogram'].includes(type)) t.fail(`${name} lacks HELP or a known TYPE`)
    if (type === 'counter' && !name.endsWith('_total')) t.fail(`counter ${name} does not end in _total`)
    if (type === 'histogram' && !name.endsWith('_seconds')) t.fail(`histogram ${name} does not end in _seconds`)
  }
  return samples
}

t.test('stats(): acquire-wait and hold histograms, and connection counters, follow real requests', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app({ maxConnections: 2 })
  app.post('/items', async (request) => {
    await request.db.insertInto('items').values({ name: 'x' }).execute()
    await new Promise((resolve) => setTimeout(resolve, 30))
    return { ok: true }
  })
  const before = app.db.stats()
  t.equal(before.connectionsCreated, 0, 'registering opened no pool connection')
  t.same(before.acquireWaitSeconds, { count: 0, sum: 0, buckets: before.acquireWaitSeconds.buckets.map(({ le }) => ({ le, count: 0 })) })

  // Five requests through two connections: three of them wait for one.
  const responses = await Promise.all(Array.from({ length: 5 }, () => app.inject({ method: 'POST', url: '/items' })))
  t.same(responses.map((res) => res.statusCode), [200, 200, 200, 200, 200])
  const stats = app.db.stats()
  t.equal(stats.acquires, 5)
  t.equal(stats.acquireWaitSeconds.count, 5, 'every acquire is observed')
  t.equal(stats.holdSeconds.count, 5, 'every release is observed')
  t.ok(stats.holdSeconds.sum >= 5 * 0.025, `each hold lasted the handler's 30 ms (sum ${stats.holdSeconds.sum} s)`)
  t.ok(stats.acquireWaitSeconds.sum >= 0.025, `the waiting requests' waits were measured (sum ${stats.acquireWaitSeconds.sum} s)`)
  const counts = stats.holdSeconds.buckets.map((bucket) => bucket.count)
  t.same(counts, [...counts].sort((a, b) => a - b), 'buckets are cumulative')
  t.equal(stats.holdSeconds.buckets.find((bucket) => bucket.le === 0.025)?.count, 0, 'no hold was shorter than 25 ms')
  t.equal(stats.holdSeconds.buckets.at(-1)?.count, 5, 'all fall within the last bound')
  t.equal(stats.connectionsCreated, 2, 'the pool opened two connections')
  t.equal(stats.connectionsRemoved, 0)
  t.equal(stats.idleErrors, 0)
  t.equal(stats.circuitOpen, false)
})

t.test('stats(): an idle connection killed under the pool counts as an idle error and a removal', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({}, { logger: { level: 'silent' } })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  await app.inject('/')
  t.equal(app.db.stats().idle, 1)
  await db.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND state = 'idle'", [db.name])
  const stats = await eventually(async () => app.db.stats(), (s) => s.connectionsRemoved === 1)
  t.equal(stats.idleErrors, 1, 'the idle client\'s error was counted')
  t.equal(stats.connectionsRemoved, 1, 'and its removal')
  t.equal(stats.total, 0)
})

t.test('metrics(): valid Prometheus text whose values are the stats, labelled with the pool name', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app({ name: 'primary "east" \\ 1' })
  app.post('/items', async (request) => request.db.insertInto('items').values({ name: 'x' }).returningAll().executeTakeFirstOrThrow())
  app.post('/fail', async (request, reply) => {
    await request.db.insertInto('items').values({ name: 'y' }).execute()
    return reply.code(422).send({ no: true })
  })
  await app.inject({ method: 'POST', url: '/items' })
  await app.inject({ method: 'POST', url: '/fail' })
  t.equal(app.db.name, 'primary "east" \\ 1')

  const stats = app.db.stats()
  const samples = parseExposition(t, app.db.metrics())
  const pool = 'pool="primary \\"east\\" \\\\ 1"'
  t.equal(samples.get(`fastify_db_session_commits_total{${pool}}`), 1)
  t.equal(samples.get(`fastify_db_session_rollbacks_total{${pool}}`), 1)
  t.equal(samples.get(`fastify_db_session_acquires_total{${pool}}`), 2)
  t.equal(samples.get(`fastify_db_session_connections{${pool},state="idle"}`), stats.idle)
  t.equal(samples.get(`fastify_db_session_connections{${pool},state="active"}`), 0)
  t.equal(samples.get(`fastify_db_session_max_connections{${pool}}`), 10)
  t.equal(samples.get(`fastify_db_session_circuit_open{${pool}}`), 0)
  t.equal(samples.get(`fastify_db_session_connections_created_total{${pool}}`), 1)
  t.equal(samples.get(`fastify_db_session_connection_hold_seconds_count{${pool}}`), 2)
  t.equal(samples.get(`fastify_db_session_connection_hold_seconds_bucket{${pool},le="+Inf"}`), 2)
  t.equal(samples.get(`fastify_db_session_connection_hold_seconds_sum{${pool}}`), stats.holdSeconds.sum)
  t.equal(samples.get(`fastify_db_session_acquire_wait_seconds_bucket{${pool},le="60"}`), 2)
  t.equal(samples.get(`fastify_db_session_acquire_wait_seconds_bucket{${pool},le="0.001"}`), stats.acquireWaitSeconds.buckets[0].count)
})

t.test('metricsRoute serves the metrics without touching the database', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ metricsRoute: '/metrics' })
  const res = await app.inject('/metrics')
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8')
  t.match(res.body, /^fastify_db_session_acquires_total\{pool="default"\} 0$/m)
  parseExposition(t, res.body)
  t.equal(app.db.stats().acquires, 0, 'the scrape took no connection')
  t.equal(await db.connections(), 0)
})

t.test('combineMetrics: one exposition, each metric described once, a sample per pool', async (t) => {
  const db = await testDatabase(t)
  const primary = await db.app({ name: 'primary' })
  const replica = await db.app({ name: 'replica', maxConnections: 3 })
  const text = combineMetrics(primary.db, replica.db)
  const samples = parseExposition(t, text)
  t.equal(samples.get('fastify_db_session_max_connections{pool="primary"}'), 10)
  t.equal(samples.get('fastify_db_session_max_connections{pool="replica"}'), 3)
  t.equal(text.match(/^# TYPE fastify_db_session_max_connections /gm)?.length, 1)
  t.equal(dbSession.combineMetrics, combineMetrics, 'also on the default export')

  const twin = await db.app({ maxConnections: 1 })
  const other = await db.app({ maxConnections: 1 })
  t.throws(() => combineMetrics(twin.db, other.db), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /names must differ.*default, default/ })
})

t.test('name and metricsRoute are checked at register time', async (t) => {
  const cases: Array<[object, RegExp]> = [
    [{ name: '' }, /name must be a non-empty string/],
    [{ name: 7 }, /name must be a non-empty string/],
    [{ metricsRoute: 'metrics' }, /metricsRoute must be a path starting with '\/'/],
    [{ metricsRoute: true }, /metricsRoute must be a path/]
  ]
  for (const [options, message] of cases) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(dbSession, { connectionString: 'postgres://127.0.0.1:1/none', ...options }).ready() }, { code: 'FST_DB_SESSION_INVALID_OPTION', message })
  }
  const app = Fastify()
  await app.register(dbSession, { connectionString: 'postgres://127.0.0.1:1/none', metricsRoute: false, startupCheck: false })
  t.equal((await app.inject('/metrics')).statusCode, 404, 'metricsRoute false serves nothing')
  await app.close()
})
