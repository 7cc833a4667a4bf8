// OpenTelemetry spans: one per unit of work, a child of the span active when it began, read by the
// real SDK (an in-memory exporter) with a real context manager, on every way a unit can end.
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import type { Test } from 'tap'
import { sql } from 'kysely'
import { context, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api'
import type { Span } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { AlwaysOffSampler, BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base'
import { eventually, testDatabase } from './helpers/database.js'
import { deferred, itemNames } from './helpers/util.js'

// Real conflicts, timeouts and hang-ups on a loaded machine: longer than tap's default 30 s.
t.setTimeout(90_000)

// What an SDK's start() does: AsyncLocalStorage carries the active span across awaits.
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())

/** A tracer provider whose ended spans are kept in memory. */
function sdk (t: Test, sampled = true) {
  const exporter = new InMemorySpanExporter()
  const tracerProvider = new BasicTracerProvider({
    spanProcessors: [new SimpleSpanProcessor(exporter)],
    ...(sampled ? {} : { sampler: new AlwaysOffSampler() })
  })
  t.teardown(() => tracerProvider.shutdown())
  const tracer = tracerProvider.getTracer('test')
  return {
    tracerProvider,
    /** Runs `fn` inside a span of the app's own (as @fastify/otel's request span would be). */
    within<T> (name: string, fn: () => Promise<T>): Promise<T> {
      return tracer.startActiveSpan(name, async (span: Span) => {
        try {
          return await fn()
        } finally {
          span.end()
        }
      })
    },
    /** Ended spans named `transaction …`: ours. */
    units: (): ReadableSpan[] => exporter.getFinishedSpans().filter((span) => span.name.startsWith('transaction')),
    spans: (): ReadableSpan[] => exporter.getFinishedSpans()
  }
}

const OUTCOME = 'fastify_db_session.outcome'
const REASON = 'fastify_db_session.finish_reason'

async function itemsTable (t: Test) {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL UNIQUE)')
  return db
}

t.test('commit: one CLIENT span, child of the request\'s span, with the conventions\' attributes and ours', async (t) => {
  const { tracerProvider, within, units, spans } = sdk(t)
  const db = await itemsTable(t)
  const app = await db.app({ name: 'main', openTelemetry: { tracerProvider } })
  app.post('/items/:name', { config: { db: { isolationLevel: 'serializable' } } }, (request) => within('POST /items/:name', async () => {
    await request.db.insertInto('items').values({ name: (request.params as { name: string }).name }).execute()
    await request.db.selectFrom('items').selectAll().execute()
    return { ok: true }
  }))
  app.get('/items', { config: { db: { accessMode: 'read only' } } }, async (request) => request.db.selectFrom('items').selectAll().execute())
  t.equal((await app.inject({ method: 'POST', url: '/items/apple' })).statusCode, 200)
  t.same(await itemNames(db), ['apple'])

  const [unit] = units()
  const parent = spans().find((span) => span.name === 'POST /items/:name') as ReadableSpan
  t.equal(units().length, 1, 'one span for the unit of work')
  t.equal(unit.name, `transaction ${db.name}`, 'named `transaction <db.namespace>`')
  t.equal(unit.kind, SpanKind.CLIENT)
  t.equal(unit.parentSpanContext?.spanId, parent.spanContext().spanId, 'a child of the span active in the handler')
  t.equal(unit.spanContext().traceId, parent.spanContext().traceId, 'in the request\'s trace')
  t.equal(unit.instrumentationScope.name, 'fastify-db-session')
  const { attributes } = unit
  t.match(attributes, {
    'db.system.name': 'postgresql',
    'db.namespace': db.name,
    'db.client.connection.pool.name': 'main',
    'server.address': new URL(db.url).hostname,
    'server.port': Number(new URL(db.url).port),
    'http.route': '/items/:name',
    'fastify_db_session.route': 'POST /items/:name',
    'fastify_db_session.isolation_level': 'serializable',
    'fastify_db_session.queries': 2,
    [OUTCOME]: 'committed',
    [REASON]: 'the response was sent'
  })
  t.type(attributes['fastify_db_session.acquire_wait_seconds'], 'number')
  t.ok((attributes['fastify_db_session.acquire_wait_seconds'] as number) >= 0)
  t.notOk('fastify_db_session.access_mode' in attributes, 'BEGIN named no access mode')
  t.notOk('error.type' in attributes)
  t.equal(unit.status.code, SpanStatusCode.UNSET)
  t.ok(unit.ended)

  // No span of the app's own is active here: the unit's span is a root.
  t.equal((await app.inject('/items')).statusCode, 200)
  const read = units()[1]
  t.equal(read.parentSpanContext, undefined, 'a root span when nothing is active')
  t.equal(read.attributes['fastify_db_session.access_mode'], 'read only')
  t.notOk('fastify_db_session.isolation_level' in read.attributes)
})

t.test('a throw, an error status, a failed COMMIT, a unit never opened: outcome, reason, status and error code', async (t) => {
  const { tracerProvider, units } = sdk(t)
  const db = await testDatabase(t)
  await db.query(`CREATE TABLE items (id serial PRIMARY KEY, name text,
    CONSTRAINT unique_name UNIQUE (name) DEFERRABLE INITIALLY DEFERRED)`)
  const app = await db.app({ openTelemetry: { tracerProvider } })
  app.post('/throw', async (request) => {
    await request.db.insertInto('items').values({ name: 'thrown' }).execute()
    throw Object.assign(new Error('refused by the handler'), { code: 'E_REFUSED', statusCode: 422 })
  })
  app.post('/status', async (request, reply) => {
    await request.db.insertInto('items').values({ name: 'status' }).execute()
    return reply.code(500).send({ failed: true })
  })
  app.post('/twins', async (request, reply) => {
    // Both inserts pass; the deferred constraint fails only at COMMIT.
    await request.db.insertInto('items').values([{ name: 'twin' }, { name: 'twin' }]).execute()
    return reply.code(201).send({ created: 2 })
  })
  app.post('/no-query', async (request) => {
    request.afterCommit(() => {})
    return { ok: true }
  })

  const thrown = await app.inject({ method: 'POST', url: '/throw' })
  t.equal(thrown.statusCode, 422)
  let unit = units().at(-1) as ReadableSpan
  t.match(unit.attributes, { [OUTCOME]: 'rolled back', [REASON]: 'the request failed', 'error.type': 'E_REFUSED', 'fastify_db_session.queries': 1 })
  t.notOk('db.response.status_code' in unit.attributes, 'not a PostgreSQL error')
  t.same(unit.status, { code: SpanStatusCode.ERROR, message: 'refused by the handler' })

  t.equal((await app.inject({ method: 'POST', url: '/status' })).statusCode, 500)
  unit = units().at(-1) as ReadableSpan
  t.match(unit.attributes, { [OUTCOME]: 'rolled back', [REASON]: 'the response was sent' })
  t.notOk('error.type' in unit.attributes, 'no error: commitWhen said roll back')
  t.equal(unit.status.code, SpanStatusCode.UNSET)

  const twins = await app.inject({ method: 'POST', url: '/twins' })
  t.equal(twins.json().code, 'FST_DB_SESSION_COMMIT_FAILED')
  unit = units().at(-1) as ReadableSpan
  t.match(unit.attributes, { [OUTCOME]: 'commit failed', 'error.type': 'FST_DB_SESSION_COMMIT_FAILED', 'db.response.status_code': '23505' })
  t.equal(unit.status.code, SpanStatusCode.ERROR)
  t.same(await itemNames(db), [], 'nothing was written')

  t.equal((await app.inject({ method: 'POST', url: '/no-query' })).statusCode, 200)
  unit = units().at(-1) as ReadableSpan
  t.match(unit.attributes, { [OUTCOME]: 'never opened', 'fastify_db_session.queries': 0 })
  t.equal(unit.name, 'transaction', 'no connection: no database to name')
  t.notOk('db.namespace' in unit.attributes)
  t.equal(units().length, 4, 'one span per request')
})

t.test('a PostgreSQL error thrown from the handler: its SQLSTATE as error.type and db.response.status_code', async (t) => {
  const { tracerProvider, units } = sdk(t)
  const db = await itemsTable(t)
  await db.query("INSERT INTO items (name) VALUES ('taken')")
  const app = await db.app({ openTelemetry: { tracerProvider } })
  app.post('/items', async (request) => {
    await request.db.insertInto('items').values({ name: 'taken' }).execute()
    return { ok: true }
  })
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 500)
  const [unit] = units()
  t.match(unit.attributes, { [OUTCOME]: 'rolled back', 'error.type': '23505', 'db.response.status_code': '23505' })
  t.equal(unit.status.code, SpanStatusCode.ERROR)
})

t.test('the client goes away mid-request, and a handler timeout: rolled back, each with its reason', async (t) => {
  const { tracerProvider, units } = sdk(t)
  const db = await itemsTable(t)
  const app = await db.app({ openTelemetry: { tracerProvider } }, { logger: { level: 'silent' } })
  const inserted = deferred()
  const go = deferred()
  app.get('/hang-up', async (request) => {
    await request.db.insertInto('items').values({ name: 'abandoned' }).execute()
    inserted.resolve()
    await go.promise
    return { ok: true }
  })
  const late = deferred()
  app.post('/slow', { handlerTimeout: 150 }, async (request) => {
    await request.db.insertInto('items').values({ name: 'slow' }).execute()
    await late.promise
    return { ok: true }
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo
  const socket = connect({ port, host: '127.0.0.1' })
  socket.on('error', () => {})
  socket.write('GET /hang-up HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
  await inserted.promise
  socket.destroy()
  const [aborted] = await eventually(async () => units(), (spans) => spans.length === 1)
  t.match(aborted.attributes, { [OUTCOME]: 'rolled back', [REASON]: 'the client went away', 'fastify_db_session.queries': 1 })
  t.equal(aborted.status.code, SpanStatusCode.UNSET, 'a client that left is no database error')
  go.resolve()

  const timedOut = await app.inject({ method: 'POST', url: '/slow' })
  t.equal(timedOut.json().code, 'FST_ERR_HANDLER_TIMEOUT')
  const spans = await eventually(async () => units(), (spans) => spans.length === 2)
  t.match(spans[1].attributes, { [OUTCOME]: 'rolled back', [REASON]: 'the handler timed out', 'error.type': 'FST_ERR_HANDLER_TIMEOUT' })
  t.equal(spans[1].status.code, SpanStatusCode.ERROR)
  late.resolve()
  t.same(await itemNames(db), [])
})

t.test('the hold limit ends a unit: its error on the span', async (t) => {
  const { tracerProvider, units } = sdk(t)
  const db = await itemsTable(t)
  const app = await db.app({ leakTimeoutMillis: 200, openTelemetry: { tracerProvider } }, { logger: { level: 'silent' } })
  app.get('/held', async (request) => {
    await request.db.insertInto('items').values({ name: 'held' }).execute()
    await new Promise((resolve) => setTimeout(resolve, 600))
    return { ok: true }
  })
  const res = await app.inject('/held')
  t.equal(res.json().code, 'FST_DB_SESSION_HOLD_TIMEOUT')
  const [unit] = await eventually(async () => units(), (spans) => spans.length === 1)
  t.match(unit.attributes, { [OUTCOME]: 'rolled back', 'error.type': 'FST_DB_SESSION_HOLD_TIMEOUT' })
  t.equal(unit.status.code, SpanStatusCode.ERROR)
})

t.test('fastify.db.transaction: a span per attempt (retries), its label, and what its callback threw', async (t) => {
  const { tracerProvider, within, units, spans } = sdk(t)
  const db = await itemsTable(t)
  const app = await db.app({ openTelemetry: { tracerProvider } })
  let attempts = 0
  const value = await within('job', () => app.db.transaction(async (trx) => {
    await trx.insertInto('items').values({ name: `try ${++attempts}` }).execute()
    // A serialization failure, as PostgreSQL reports one, on the first attempt only.
    if (attempts === 1) await sql`DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$`.execute(trx)
    return attempts
  }, { retries: 2, label: 'nightly job' }))
  t.equal(value, 2)
  t.same(await itemNames(db), ['try 2'])
  const job = spans().find((span) => span.name === 'job') as ReadableSpan
  const [first, second] = units()
  t.equal(units().length, 2, 'one span per attempt: each is a transaction of its own')
  for (const unit of [first, second]) {
    t.equal(unit.parentSpanContext?.spanId, job.spanContext().spanId, 'each a child of the caller\'s span')
    t.equal(unit.attributes['fastify_db_session.route'], 'nightly job')
    t.notOk('http.route' in unit.attributes)
  }
  t.match(first.attributes, { [OUTCOME]: 'rolled back', [REASON]: 'its callback threw', 'fastify_db_session.retryable': true, 'error.type': 'FST_DB_SESSION_SERIALIZATION_FAILURE', 'db.response.status_code': '40001' })
  t.match(second.attributes, { [OUTCOME]: 'committed', [REASON]: 'its callback returned' })
  t.notOk('fastify_db_session.retryable' in second.attributes)

  // Without a label: named after fastify.db.transaction. What a callback throws is the error type.
  await t.rejects(app.db.transaction(async () => { throw new Error('plain') }), { message: 'plain' })
  let unit = units().at(-1) as ReadableSpan
  t.match(unit.attributes, { 'fastify_db_session.route': 'fastify.db.transaction', [OUTCOME]: 'never opened', 'error.type': 'Error' })
  t.same(unit.status, { code: SpanStatusCode.ERROR, message: 'plain' })
  // eslint-disable-next-line prefer-promise-reject-errors
  await t.rejects(app.db.transaction(async () => Promise.reject('a string')))
  unit = units().at(-1) as ReadableSpan
  t.match(unit.attributes, { 'error.type': '_OTHER' })
  t.same(unit.status, { code: SpanStatusCode.ERROR, message: 'a string' })
})

t.test('Kysely\'s own executor (a query with an AbortSignal) runs in the unit too, and counts', async (t) => {
  const { tracerProvider, units } = sdk(t)
  const db = await itemsTable(t)
  const app = await db.app({ openTelemetry: { tracerProvider } })
  app.get('/', async (request) => {
    const { signal } = new AbortController()
    await sql`SELECT 1`.execute(request.db, { signal })
    await sql`SELECT 2`.execute(request.db, { signal })
    return { ok: true }
  })
  t.equal((await app.inject('/')).statusCode, 200)
  t.match(units()[0].attributes, { [OUTCOME]: 'committed', 'fastify_db_session.queries': 2 })
})

t.test('the global tracer provider, with no option, even registered after the plugin; openTelemetry: false, and a span not sampled, record nothing', async (t) => {
  const global = sdk(t)
  const db = await itemsTable(t)
  // Registered before the SDK is: the global provider is a proxy, and finds the SDK later.
  const traced = await db.app({ name: 'traced' })
  trace.setGlobalTracerProvider(global.tracerProvider)
  t.teardown(() => trace.disable())
  const silent = await db.app({ name: 'silent', openTelemetry: false })
  const unsampled = sdk(t, false)
  const sampledOut = await db.app({ name: 'sampled-out', openTelemetry: { tracerProvider: unsampled.tracerProvider } })
  for (const app of [traced, silent, sampledOut]) {
    app.get('/', async (request) => request.db.selectFrom('items').selectAll().execute())
    t.equal((await app.inject('/')).statusCode, 200)
  }
  t.same(global.units().map((span) => span.attributes['db.client.connection.pool.name']), ['traced'], 'only the registration without the option traced, to the global provider')
  t.same(unsampled.spans(), [])
})
