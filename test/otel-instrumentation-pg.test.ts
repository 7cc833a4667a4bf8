// With @opentelemetry/instrumentation-pg, the real one, the spans of a unit's connect, queries and
// COMMIT nest under the unit's span: the plugin runs them in its span's context.
import t from 'tap'
import type { Test } from 'tap'
import { context, trace } from '@opentelemetry/api'
import type { Span } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { PgInstrumentation } from '@opentelemetry/instrumentation-pg'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base'

context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())
const exporter = new InMemorySpanExporter()
const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
// Enabled before pg is first loaded: the instrumentation patches pg's Client as pg requires it
// (require-in-the-middle), so everything that uses pg is imported only below.
const instrumentation = new PgInstrumentation()
instrumentation.setTracerProvider(tracerProvider)
const { testDatabase } = await import('./helpers/database.js')

t.teardown(() => {
  instrumentation.disable()
  return tracerProvider.shutdown()
})

/** A query span's SQL (the newer semantic conventions' attribute, or the older one's). */
const text = (span: ReadableSpan): string => String(span.attributes['db.query.text'] ?? span.attributes['db.statement'])

/** The spans of one request, by trace. */
function trail (t: Test, parent: ReadableSpan) {
  const inTrace = exporter.getFinishedSpans().filter((span) => span.spanContext().traceId === parent.spanContext().traceId)
  const unit = inTrace.find((span) => span.name.startsWith('transaction')) as ReadableSpan
  t.ok(unit, 'the unit of work has its span')
  t.equal(unit.parentSpanContext?.spanId, parent.spanContext().spanId, 'under the handler\'s span')
  const under = (span: ReadableSpan): boolean => span.parentSpanContext?.spanId === unit.spanContext().spanId
  return { unit, inTrace, under }
}

t.test('the unit\'s connect, queries and COMMIT are children of its span; the handler\'s own query is not', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app({ openTelemetry: { tracerProvider } })
  const tracer = tracerProvider.getTracer('test')
  let handlerSpan: ReadableSpan | undefined
  app.post('/items', (request) => tracer.startActiveSpan('handler', async (span: Span) => {
    await request.db.insertInto('items').values({ name: 'apple' }).execute()
    await request.db.selectFrom('items').selectAll().execute()
    // A query of the app's own, outside request.db: a sibling of the unit's span, not its child.
    await db.query('SELECT 1 AS outside')
    handlerSpan = span as unknown as ReadableSpan
    span.end()
    return { ok: true }
  }))
  exporter.reset()
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 200)
  const { unit, inTrace, under } = trail(t, handlerSpan as ReadableSpan)
  const queries = inTrace.filter((span) => span.attributes['db.system.name'] === 'postgresql' && span !== unit)
  t.ok(queries.some((span) => under(span) && /INSERT/i.test(text(span))), 'the first query (it carried BEGIN)')
  t.ok(queries.some((span) => under(span) && /select/i.test(text(span)) && !/outside/.test(text(span))), 'the second query')
  t.ok(queries.some((span) => under(span) && /^COMMIT$/.test(text(span))), 'COMMIT')
  t.ok(inTrace.some((span) => under(span) && span.name.startsWith('pg-pool.connect')), 'the checkout from the pool')
  const outside = queries.find((span) => /outside/.test(text(span))) as ReadableSpan
  t.equal(outside.parentSpanContext?.spanId, unit.parentSpanContext?.spanId, 'the handler\'s own query is the unit\'s sibling')
})

t.test('a rolled-back unit: ROLLBACK is its child too', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app({ openTelemetry: { tracerProvider } })
  let root: Span | undefined
  app.post('/items', async (request) => {
    root = trace.getActiveSpan()
    await request.db.insertInto('items').values({ name: 'pear' }).execute()
    throw new Error('no')
  })
  exporter.reset()
  await tracerProvider.getTracer('test').startActiveSpan('client', async (span: Span) => {
    t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 500)
    span.end()
  })
  t.ok(root, 'the handler ran inside the test\'s span')
  const { under, inTrace } = trail(t, exporter.getFinishedSpans().find((span) => span.name === 'client') as ReadableSpan)
  t.ok(inTrace.some((span) => under(span) && /^ROLLBACK$/.test(text(span))), 'ROLLBACK')
})
