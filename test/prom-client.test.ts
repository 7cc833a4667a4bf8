// promClientRegistry: the plugin's metrics in a prom-client Registry, beside prom-client's own,
// several registrations in one registry, the whole scrape linted by promtool.
import t from 'tap'
import type { Test } from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { Counter, Registry, collectDefaultMetrics } from 'prom-client'
import type { OpenMetricsContentType } from 'prom-client'
import { combineMetrics } from '../lib/index.js'
import { testDatabase } from './helpers/database.js'

// promtool ships with Prometheus (Debian: apt-get install -y prometheus). Without it the lint is
// skipped on a developer's machine; under CI, where .ci/run installs it, it must be there.
const missing = spawnSync('promtool', ['--version']).error !== undefined
if (missing && process.env.CI) throw new Error('CI is set but promtool is not installed: .ci/run must apt-get install -y prometheus')
const noPromtool = missing ? 'promtool is not installed (apt-get install -y prometheus); the exposition is not linted' : false

/** promtool check metrics on `text`: its exit code and what it printed (lint problems, parse errors). */
async function promtool (text: string): Promise<{ code: number | null, output: string }> {
  const child = spawn('promtool', ['check', 'metrics'])
  let output = ''
  child.stdout.on('data', (chunk) => { output += chunk })
  child.stderr.on('data', (chunk) => { output += chunk })
  child.stdin.end(text)
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  return { code, output }
}

async function appsWithTraffic (t: Test, registry: Registry) {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const primary = await db.app({ name: 'primary', promClientRegistry: registry })
  const replica = await db.app({ name: 'replica "b"', maxConnections: 3, promClientRegistry: registry })
  primary.post('/items', async (request) => request.db.insertInto('items').values({ name: 'x' }).returning('id').executeTakeFirstOrThrow())
  primary.post('/refused', async (request, reply) => {
    await request.db.insertInto('items').values({ name: 'y' }).execute()
    return reply.code(422).send({ refused: true })
  })
  replica.get('/items', async (request) => request.db.selectFrom('items').selectAll().execute())
  for (let i = 0; i < 3; i++) t.equal((await primary.inject({ method: 'POST', url: '/items' })).statusCode, 200)
  t.equal((await primary.inject({ method: 'POST', url: '/refused' })).statusCode, 422)
  t.equal((await replica.inject('/items')).statusCode, 200)
  return { db, primary, replica }
}

t.test('two registrations and prom-client\'s default metrics in one registry: what metrics() says, and promtool finds nothing to fault', async (t) => {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const { primary, replica } = await appsWithTraffic(t, registry)

  const scrape = await registry.metrics()
  const lines = new Set(scrape.split('\n'))
  t.ok(lines.has('# TYPE process_cpu_user_seconds_total counter'), 'prom-client\'s default metrics are in the scrape')
  t.ok(lines.has('fastify_db_session_commits_total{pool="primary"} 3'), 'three commits on the primary')
  t.ok(lines.has('fastify_db_session_rollbacks_total{pool="primary"} 1'), 'one rollback on the primary (the 422)')
  t.ok(lines.has('fastify_db_session_acquires_total{pool="primary"} 4'))
  t.ok(lines.has('fastify_db_session_commits_total{pool="replica \\"b\\""} 1'), 'the replica\'s one commit, its label escaped')
  t.ok(lines.has('fastify_db_session_acquires_total{pool="replica \\"b\\""} 1'))
  t.ok(lines.has('fastify_db_session_connection_hold_seconds_count{pool="primary"} 4'), 'four holds observed on the primary')
  t.ok(lines.has('fastify_db_session_acquire_wait_seconds_bucket{pool="replica \\"b\\"",le="+Inf"} 1'))
  t.ok(lines.has('fastify_db_session_max_connections{pool="replica \\"b\\""} 3'))
  t.ok(lines.has('fastify_db_session_connections{pool="primary",state="active"} 0'))
  t.equal(scrape.match(/^# TYPE fastify_db_session_commits_total counter$/gm)?.length, 1, 'each family described once')

  // Every line metrics() writes for the two pools (HELP, TYPE, samples) is in the registry's scrape, as written.
  const ours = combineMetrics(primary.db, replica.db).trimEnd().split('\n')
  t.same(ours.filter((line) => !lines.has(line)), [], 'the registry says exactly what combineMetrics() says')
  t.equal(scrape.split('\n').filter((line) => line.startsWith('fastify_db_session_')).length, ours.filter((line) => !line.startsWith('#')).length, 'and nothing more of ours')

  if (noPromtool !== false) {
    t.comment(noPromtool)
    return
  }
  // The whole scrape parses (exit 1 would be a format error); the only lint problems are prom-client's
  // own gauges named like counters (nodejs_active_handles_total and its kin), none of ours.
  const lint = await promtool(scrape)
  const problems = lint.output.trim().split('\n')
  t.same(problems.filter((line) => !/^nodejs_active_\w+_total non-counter metrics should not have "_total" suffix$/.test(line)), [], `promtool finds nothing but prom-client's own names to fault: ${lint.output}`)
  t.equal(lint.code, 3, 'promtool check metrics parsed it all (3: lint problems only)')
  // Our part alone, as a registry without prom-client's defaults holds it: not one problem.
  const ownRegistry = new Registry()
  const { primary: other } = await appsWithTraffic(t, ownRegistry)
  t.equal(other.db.stats().commits, 3)
  const own = await promtool(await ownRegistry.metrics())
  t.equal(own.output, '', 'promtool check metrics reports no problem in the plugin\'s metrics')
  t.equal(own.code, 0, 'and exits 0')
})

t.test('promtool would catch a fault: a counter without _total in the same registry', { skip: noPromtool }, async (t) => {
  // Shows the lint above can fail: the same kind of scrape with one badly named counter.
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  await appsWithTraffic(t, registry)
  registry.registerMetric(new Counter({ name: 'badly_named', help: 'A counter without the suffix.', registers: [] }))
  const lint = await promtool(await registry.metrics())
  t.match(lint.output, /badly_named counter metrics should have "_total" suffix/)
  t.not(lint.code, 0)
})

t.test('an OpenMetrics registry gets counters named the OpenMetrics way', async (t) => {
  const registry = new Registry<OpenMetricsContentType>()
  registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE)
  const db = await testDatabase(t)
  const app = await db.app({ promClientRegistry: registry })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  await app.inject('/')
  const scrape = await registry.metrics()
  t.match(scrape, /^# TYPE fastify_db_session_commits counter$/m)
  t.match(scrape, /^fastify_db_session_commits_total\{pool="default"\} 1$/m)
  t.match(scrape, /^fastify_db_session_connection_hold_seconds_bucket\{pool="default",le="\+Inf"\} 1$/m)
  t.notMatch(scrape, /_total_total/)
  t.ok(scrape.endsWith('# EOF\n'))
  // resetMetrics() resets prom-client's own metrics; ours are the pool's lifetime figures and stay.
  registry.resetMetrics()
  t.match(await registry.metrics(), /^fastify_db_session_commits_total\{pool="default"\} 1$/m, 'resetMetrics() leaves the lifetime counters alone')
})

t.test('close() takes a registration\'s samples out; the last one takes the metrics out, so a new app can register again', async (t) => {
  const registry = new Registry()
  const db = await testDatabase(t)
  const first = await db.app({ name: 'first', promClientRegistry: registry })
  const second = await db.app({ name: 'second', promClientRegistry: registry })
  t.match(await registry.metrics(), /fastify_db_session_acquires_total\{pool="first"\} 0/)
  await first.close()
  const after = await registry.metrics()
  t.notMatch(after, /pool="first"/, 'the closed pool is gone')
  t.match(after, /fastify_db_session_acquires_total\{pool="second"\} 0/, 'the other stays')
  await second.close()
  t.equal(registry.getSingleMetric('fastify_db_session_acquires_total'), undefined, 'no metric of ours is left')
  t.equal(await registry.metrics(), '\n')
  const again = await db.app({ name: 'first', promClientRegistry: registry })
  t.equal(again.db.name, 'first')
  t.match(await registry.metrics(), /fastify_db_session_acquires_total\{pool="first"\} 0/, 'the same name registers again after close')
})

t.test('refused: two live registrations of one name in a registry, a registry holding one of our names, not a registry', async (t) => {
  const registry = new Registry()
  const db = await testDatabase(t)
  await db.app({ promClientRegistry: registry })
  await t.rejects(db.app({ promClientRegistry: registry }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /already reports a pool named 'default'/ })

  const foreign = new Registry()
  // eslint-disable-next-line no-new
  new Counter({ name: 'fastify_db_session_commits_total', help: 'Someone else\'s.', registers: [foreign] })
  await t.rejects(db.app({ name: 'other', promClientRegistry: foreign }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /already holds fastify_db_session_commits_total, not registered by this plugin/ })
  t.equal(foreign.getSingleMetric('fastify_db_session_acquires_total'), undefined, 'nothing was half registered')

  await t.rejects(db.app({ name: 'x', promClientRegistry: {} as Registry }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /promClientRegistry must be a prom-client Registry/ })
  await t.rejects(db.app({ name: 'y', promClientRegistry: null as unknown as Registry }), { code: 'FST_DB_SESSION_INVALID_OPTION' })
})
