// One benchmark variant as its own process: `tsx bench/server.ts <variant> <port> <databaseUrl> [acquireTimeoutMillis]`.
// GET / is the measured route; GET /__cpu reports this process's CPU time, read between runs
// (and, for the saturation variant, the longest the server took over a request).
import { monitorEventLoopDelay } from 'node:perf_hooks'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import { Kysely, PostgresDialect, sql } from 'kysely'
import pg from 'pg'
import fastifyPostgres from '@fastify/postgres'
import dbSession from './plugin.js'

const [variant, portText, databaseUrl, acquireTimeout] = process.argv.slice(2)
const POOL = 10
const ROWS = 1000
const id = () => 1 + Math.floor(Math.random() * ROWS)
const slowest = { served: 0, refused: 0 }
// How late the event loop ran callbacks (timers included): what a deadline can be late by.
const loopDelay = monitorEventLoopDelay({ resolution: 5 })

interface Database { items: { id: number, name: string } }

/**
 * Tracing on: the OpenTelemetry SDK as an app registers it (global tracer provider, AsyncLocalStorage
 * context), every span sampled, kept in a batch, and handed to an exporter that drops it: the cost
 * of making, recording and batching the spans, without a collector's network.
 */
async function startTracing (): Promise<void> {
  const { BatchSpanProcessor, NodeTracerProvider } = await import('@opentelemetry/sdk-trace-node')
  const dropping = { export: (_spans: unknown[], done: (result: { code: number }) => void) => { done({ code: 0 }) }, shutdown: async () => {} }
  new NodeTracerProvider({ spanProcessors: [new BatchSpanProcessor(dropping)] }).register()
}

async function build (): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  switch (variant) {
    case 'bare':
      app.get('/', async () => ({ ok: true }))
      break
    case 'plugin-untouched-traced':
      await startTracing()
    // falls through: the same app, with an SDK registered
    case 'plugin-untouched':
      await app.register(dbSession, { connectionString: databaseUrl, maxConnections: POOL })
      app.get('/', async () => ({ ok: true }))
      break
    case 'kysely-transaction': {
      const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: databaseUrl, max: POOL }) }) })
      app.get('/', async () => db.transaction().execute((trx) =>
        trx.selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst()))
      break
    }
    case 'fastify-postgres':
      await app.register(fastifyPostgres, { connectionString: databaseUrl, max: POOL })
      app.get('/', { pg: { transact: true } }, async (request) => {
        const { rows } = await request.pg!.query('SELECT id, name FROM items WHERE id = $1', [id()])
        return rows[0]
      })
      break
    case 'plugin-select-traced':
      await startTracing()
    // falls through
    case 'plugin-select':
      await app.register(dbSession, { connectionString: databaseUrl, maxConnections: POOL })
      app.get('/', async (request) => (request.db as unknown as Kysely<Database>)
        .selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst())
      break
    case 'plugin-readonly-autocommit':
      // No BEGIN, no COMMIT: the select is one round trip.
      await app.register(dbSession, { connectionString: databaseUrl, maxConnections: POOL })
      app.get('/', { config: { db: { accessMode: 'read only', autocommit: true } } }, async (request) => (request.db as unknown as Kysely<Database>)
        .selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst())
      break
    case 'plugin-select-prepared':
      // The same select, parsed and planned once per connection (preparedStatements).
      await app.register(dbSession, { connectionString: databaseUrl, maxConnections: POOL, preparedStatements: true })
      app.get('/', async (request) => (request.db as unknown as Kysely<Database>)
        .selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst())
      break
    case 'plugin-readonly-autocommit-prepared':
      await app.register(dbSession, { connectionString: databaseUrl, maxConnections: POOL, preparedStatements: true })
      app.get('/', { config: { db: { accessMode: 'read only', autocommit: true } } }, async (request) => (request.db as unknown as Kysely<Database>)
        .selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst())
      break
    case 'plugin-readonly-transaction':
      // BEGIN READ ONLY with the select; the response leaves before the COMMIT.
      await app.register(dbSession, { connectionString: databaseUrl, maxConnections: POOL, respondBeforeCommit: true })
      app.get('/', { config: { db: { accessMode: 'read only' } } }, async (request) => (request.db as unknown as Kysely<Database>)
        .selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst())
      break
    case 'kysely-tenant': {
      const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: databaseUrl, max: POOL }) }) })
      app.get('/', async (request) => db.transaction().execute(async (trx) => {
        await sql`SELECT set_config('app.tenant_id', ${request.headers['x-tenant'] as string}, true)`.execute(trx)
        return trx.selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst()
      }))
      break
    }
    case 'plugin-tenant':
      await app.register(dbSession, {
        connectionString: databaseUrl,
        maxConnections: POOL,
        context: { 'app.tenant_id': (request) => request.headers['x-tenant'] as string }
      })
      app.get('/', async (request) => (request.db as unknown as Kysely<Database>)
        .selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst())
      break
    case 'saturation':
      // Each request holds its connection ~20 ms: 200 clients against 10 connections must queue.
      await app.register(dbSession, { connectionString: databaseUrl, maxConnections: POOL, acquireTimeoutMillis: Number(acquireTimeout) })
      // How long the server took over each request, from its arrival to the response's end: what
      // the acquire timeout bounds (the load generator's latency adds the time requests wait to be read).
      app.addHook('onResponse', (_request, reply, done) => {
        if (reply.statusCode === 503) slowest.refused = Math.max(slowest.refused, reply.elapsedTime)
        else slowest.served = Math.max(slowest.served, reply.elapsedTime)
        done()
      })
      loopDelay.enable()
      app.get('/', async (request) => {
        await sql`SELECT pg_sleep(0.02)`.execute(request.db)
        return { ok: true }
      })
      break
    default:
      throw new Error(`unknown variant '${variant}'`)
  }
  app.get('/__cpu', { config: { db: false } }, async () => {
    const { user, system } = process.cpuUsage()
    return { micros: user + system, slowestServedMillis: slowest.served, slowestRefusedMillis: slowest.refused, maxLoopDelayMillis: loopDelay.max / 1e6 }
  })
  return app
}

const app = await build()
await app.listen({ host: '127.0.0.1', port: Number(portText) })
console.log('ready')
process.once('SIGTERM', () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
