// openTelemetry: { meterProvider }: the pool's figures as OpenTelemetry metrics (the semantic
// conventions' db.client.connection.* and our fastify_db_session.*), read by the real SDK.
import t from 'tap'
import type { Test } from 'tap'
import { metrics } from '@opentelemetry/api'
import { AggregationTemporality, DataPointType, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics'
import type { BatchObservableCallback, Meter } from '@opentelemetry/api'
import type { DataPoint, Histogram, MetricData, SumMetricData } from '@opentelemetry/sdk-metrics'
import pg from 'pg'
import { testDatabase } from './helpers/database.js'

const POOL = 'db.client.connection.pool.name'

/** A meter provider with an in-memory exporter, and what one collection holds, by metric name. */
function sdk (t: Test) {
  const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
  // Exports only when flushed: each collect() is one collection.
  const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3_600_000 })
  const meterProvider = new MeterProvider({ readers: [reader] })
  t.teardown(() => meterProvider.shutdown())
  return {
    meterProvider,
    async collect (): Promise<Map<string, MetricData>> {
      exporter.reset()
      await reader.forceFlush()
      const [resourceMetrics] = exporter.getMetrics()
      const byName = new Map<string, MetricData>()
      for (const scope of resourceMetrics?.scopeMetrics ?? []) {
        t.equal(scope.scope.name, 'fastify-db-session', 'the meter is named after the package')
        for (const metric of scope.metrics) byName.set(metric.descriptor.name, metric)
      }
      return byName
    }
  }
}

/** The data point of `name` whose attributes are exactly `attributes`. */
function point<T = number> (collected: Map<string, MetricData>, name: string, attributes: Record<string, string>): DataPoint<T> | undefined {
  const points = (collected.get(name)?.dataPoints ?? []) as Array<DataPoint<T>>
  return points.find((p) => JSON.stringify(Object.entries(p.attributes).sort()) === JSON.stringify(Object.entries(attributes).sort()))
}

t.test('after known traffic: connection counts, max, histograms and our counters, per pool, in one meter provider', async (t) => {
  const { meterProvider, collect } = sdk(t)
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const primary = await db.app({ name: 'primary', maxConnections: 4, openTelemetry: { meterProvider } })
  const replica = await db.app({ name: 'replica', maxConnections: 2, openTelemetry: { meterProvider } })
  primary.post('/items', async (request) => {
    await request.db.insertInto('items').values({ name: 'x' }).execute()
    await new Promise((resolve) => setTimeout(resolve, 20))
    return { ok: true }
  })
  primary.post('/refused', async (request, reply) => {
    await request.db.insertInto('items').values({ name: 'y' }).execute()
    return reply.code(409).send({ refused: true })
  })
  replica.get('/items', async (request) => request.db.selectFrom('items').selectAll().execute())
  for (let i = 0; i < 3; i++) t.equal((await primary.inject({ method: 'POST', url: '/items' })).statusCode, 200)
  t.equal((await primary.inject({ method: 'POST', url: '/refused' })).statusCode, 409)
  t.equal((await replica.inject('/items')).statusCode, 200)

  const collected = await collect()
  const p = { [POOL]: 'primary' }
  const r = { [POOL]: 'replica' }
  t.equal(collected.get('db.client.connection.count')?.descriptor.unit, '{connection}')
  t.equal(collected.get('db.client.connection.count')?.dataPointType, DataPointType.SUM)
  t.equal((collected.get('db.client.connection.count') as SumMetricData | undefined)?.isMonotonic, false, 'count is an up-down counter')
  t.equal(point(collected, 'db.client.connection.count', { ...p, 'db.client.connection.state': 'idle' })?.value, 1)
  t.equal(point(collected, 'db.client.connection.count', { ...p, 'db.client.connection.state': 'used' })?.value, 0)
  t.equal(point(collected, 'db.client.connection.max', p)?.value, 4)
  t.equal(point(collected, 'db.client.connection.max', r)?.value, 2)
  t.equal(point(collected, 'db.client.connection.pending_requests', p)?.value, 0)
  t.equal(point(collected, 'db.client.connection.timeouts', p)?.value, 0)
  t.equal((collected.get('db.client.connection.timeouts') as SumMetricData | undefined)?.isMonotonic, true)

  const waits = point<Histogram>(collected, 'db.client.connection.wait_time', p)?.value
  const uses = point<Histogram>(collected, 'db.client.connection.use_time', p)?.value
  const stats = primary.db.stats()
  t.equal(collected.get('db.client.connection.wait_time')?.descriptor.unit, 's')
  t.equal(collected.get('db.client.connection.use_time')?.descriptor.unit, 's')
  t.equal(waits?.count, 4, 'four acquires on the primary')
  t.equal(uses?.count, 4, 'four checkouts returned')
  t.equal(uses?.sum, stats.holdSeconds.sum, 'the same seconds as stats().holdSeconds')
  t.ok((uses?.sum ?? 0) >= 3 * 0.015, `three holds of about 20 ms (sum ${uses?.sum} s)`)
  t.same(uses?.buckets.boundaries, stats.holdSeconds.buckets.map(({ le }) => le), 'the buckets are the plugin\'s, in seconds')
  t.equal(point<Histogram>(collected, 'db.client.connection.use_time', r)?.value.count, 1, 'one on the replica')
  // One connection made per pool (requests one after another reuse it), each timed.
  const created = point<Histogram>(collected, 'db.client.connection.create_time', p)?.value
  t.equal(collected.get('db.client.connection.create_time')?.descriptor.unit, 's')
  t.equal(created?.count, 1, 'the primary\'s one new connection')
  t.ok((created?.sum ?? 0) > 0 && (created?.sum ?? 0) < 10, `its connect took some time (${created?.sum} s)`)
  t.ok((created?.sum ?? 0) <= (waits?.sum ?? 0), 'made while the first request waited: within its wait')
  t.equal(point<Histogram>(collected, 'db.client.connection.create_time', r)?.value.count, 1)

  t.equal(point(collected, 'fastify_db_session.commits', p)?.value, 3)
  t.equal(point(collected, 'fastify_db_session.rollbacks', p)?.value, 1)
  t.equal(point(collected, 'fastify_db_session.acquires', p)?.value, 4)
  t.equal(point(collected, 'fastify_db_session.connections_created', p)?.value, 1)
  t.equal(point(collected, 'fastify_db_session.commits', r)?.value, 1)
  t.equal(point(collected, 'fastify_db_session.commit_failures', p)?.value, 0)
  t.equal(point(collected, 'fastify_db_session.circuit_open', p)?.value, 0)
  t.equal(collected.get('fastify_db_session.commits')?.descriptor.unit, '{transaction}')
  t.equal((collected.get('fastify_db_session.commits') as SumMetricData | undefined)?.isMonotonic, true)

  // Every figure of stats() is there, for each pool, with the value stats() gives.
  const expected: Record<string, number> = {
    'fastify_db_session.acquires': stats.acquires,
    'fastify_db_session.commits': stats.commits,
    'fastify_db_session.rollbacks': stats.rollbacks,
    'fastify_db_session.commit_failures': stats.commitFailures,
    'fastify_db_session.aborts': stats.aborts,
    'fastify_db_session.retries': stats.retries,
    'fastify_db_session.callback_errors': stats.callbackErrors,
    'fastify_db_session.leaks': stats.leaks,
    'fastify_db_session.idle_errors': stats.idleErrors,
    'fastify_db_session.connections_created': stats.connectionsCreated,
    'fastify_db_session.connections_removed': stats.connectionsRemoved,
    'fastify_db_session.connections_destroyed': stats.destroyed,
    'fastify_db_session.circuit_rejections': stats.circuitRejections,
    'fastify_db_session.circuit_open': 0,
    'db.client.connection.timeouts': stats.acquireTimeouts,
    'db.client.connection.pending_requests': stats.waiting,
    'db.client.connection.max': stats.max
  }
  for (const [name, value] of Object.entries(expected)) t.equal(point(collected, name, p)?.value, value, `${name} = stats()`)
  t.same([...collected.keys()].sort(), [...Object.keys(expected), 'db.client.connection.count', 'db.client.connection.wait_time', 'db.client.connection.use_time', 'db.client.connection.create_time'].sort(), 'no other metric')
})

t.test('while a request holds the only connection: used 1, a waiter pending, then a timeout counted', async (t) => {
  const { meterProvider, collect } = sdk(t)
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1, acquireTimeoutMillis: 300, openTelemetry: { meterProvider } }, { logger: { level: 'silent' } })
  let release = (): void => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  let started = (): void => {}
  const holding = new Promise<void>((resolve) => { started = resolve })
  app.get('/hold', async (request) => {
    await request.db.selectNoFrom((eb) => eb.val(1).as('one')).execute()
    started()
    await held
    return { ok: true }
  })
  app.get('/quick', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  const first = app.inject('/hold')
  await holding
  const waiter = app.inject('/quick')
  const pool = { [POOL]: 'default' }
  const waiting = async (): Promise<Map<string, MetricData>> => {
    for (;;) {
      const collected = await collect()
      if (point(collected, 'db.client.connection.pending_requests', pool)?.value === 1) return collected
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
  }
  const during = await waiting()
  t.equal(point(during, 'db.client.connection.count', { ...pool, 'db.client.connection.state': 'used' })?.value, 1, 'the held connection is used')
  t.equal(point(during, 'db.client.connection.count', { ...pool, 'db.client.connection.state': 'idle' })?.value, 0)
  t.equal(point(during, 'db.client.connection.pending_requests', pool)?.value, 1, 'the second request waits')
  const timedOut = await waiter
  t.equal(timedOut.statusCode, 503)
  t.equal(timedOut.json().code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
  release()
  t.equal((await first).statusCode, 200)
  const after = await collect()
  t.equal(point(after, 'db.client.connection.timeouts', pool)?.value, 1, 'the timeout is counted')
  t.equal(point(after, 'db.client.connection.pending_requests', pool)?.value, 0)
  t.equal(point<Histogram>(after, 'db.client.connection.wait_time', pool)?.value.count, 1, 'only the acquire that succeeded has a wait time')
})

t.test('the global meter provider, as the README wires it; close() stops the observations', async (t) => {
  const { meterProvider, collect } = sdk(t)
  // The SDK's own meter, with a count of the times the SDK ran our batch callbacks.
  let calls = 0
  const counted = {
    getMeter (...args: Parameters<MeterProvider['getMeter']>): Meter {
      const meter = meterProvider.getMeter(...args)
      const wrapped = new Map<BatchObservableCallback, BatchObservableCallback>()
      return Object.assign(Object.create(meter) as Meter, {
        addBatchObservableCallback: (callback: BatchObservableCallback, observables: Parameters<Meter['addBatchObservableCallback']>[1]) => {
          wrapped.set(callback, (result) => { calls++; return callback(result) })
          meter.addBatchObservableCallback(wrapped.get(callback) as BatchObservableCallback, observables)
        },
        removeBatchObservableCallback: (callback: BatchObservableCallback, observables: Parameters<Meter['removeBatchObservableCallback']>[1]) => {
          meter.removeBatchObservableCallback(wrapped.get(callback) as BatchObservableCallback, observables)
        }
      })
    }
  }
  metrics.setGlobalMeterProvider(counted)
  t.teardown(() => metrics.disable())
  const db = await testDatabase(t)
  const app = await db.app({ openTelemetry: { meterProvider: metrics.getMeterProvider() } })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  await app.inject('/')
  const pool = { [POOL]: 'default' }
  t.equal(point(await collect(), 'fastify_db_session.commits', pool)?.value, 1, 'read through the global provider')
  t.equal(calls, 1, 'one collection, one read of the figures')
  await app.close()
  await collect()
  t.equal(calls, 1, 'after close() the figures are no longer read')
})

t.test('without the option no meter is asked for; bad values are refused', async (t) => {
  const db = await testDatabase(t)
  let asked = 0
  const meterProvider = { getMeter: () => { asked++; return metrics.getMeterProvider().getMeter('x') } }
  const app = await db.app({ openTelemetry: false })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  t.equal((await app.inject('/')).statusCode, 200)
  t.equal(asked, 0)
  await db.app({ name: 'asked', openTelemetry: { meterProvider } })
  t.equal(asked, 1, 'a given provider is asked for one meter')
  const expected = /openTelemetry must be false or \{ meterProvider, tracerProvider \} \(either may be left out, not both\)/
  await t.rejects(db.app({ openTelemetry: {} as never }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: expected })
  await t.rejects(db.app({ openTelemetry: true as never }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /instead got 'true'/ })
  await t.rejects(db.app({ openTelemetry: null as never }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /instead got 'null'/ })
  await t.rejects(db.app({ openTelemetry: { meterProvider: null } as never }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /instead got meterProvider 'null'/ })
  await t.rejects(db.app({ openTelemetry: { meterProvider: {} } as never }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /instead got meterProvider '\[object Object\]'/ })
  await t.rejects(db.app({ openTelemetry: { tracerProvider: null } as never }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /instead got tracerProvider 'null'/ })
  await t.rejects(db.app({ openTelemetry: { meterProvider, tracerProvider: {} } as never }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /instead got tracerProvider/ })
  await t.rejects(db.app({ openTelemetry: { meterProvider, tracer: {} } as never }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /unknown option 'openTelemetry.tracer'; known are meterProvider, tracerProvider/ })
  t.equal(asked, 1, 'a refused option asks for no meter')
})

t.test('a pool of the app\'s own: its connects are not timed (no create_time), the rest is reported', async (t) => {
  const { meterProvider, collect } = sdk(t)
  const db = await testDatabase(t)
  const pool = new pg.Pool({ connectionString: db.url, max: 2 })
  const app = await db.app({ connectionString: undefined, pool: pool as never, openTelemetry: { meterProvider } })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  t.equal((await app.inject('/')).statusCode, 200)
  const collected = await collect()
  t.equal(point(collected, 'fastify_db_session.connections_created', { [POOL]: 'default' })?.value, 1, 'the connection was made')
  t.notOk(collected.has('db.client.connection.create_time'), 'but not timed: the plugin did not make the pool')
  // Before the database is dropped: its connections ended by the server would be errors of a pool nobody listens to.
  await app.close()
  await pool.end()
})
