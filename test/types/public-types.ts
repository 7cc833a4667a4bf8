// Type tests for the public API as users import it: checked by `tsc -p test/types` in the
// test command. Each @ts-expect-error fails the build if the wrong usage starts to compile.
import Fastify from 'fastify'
import type { FastifyContextConfig, FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import type { Generated, Kysely, Transaction } from 'kysely'
import pg from 'pg'
import Cursor from 'pg-cursor'
import dbSession, { combineMetrics, errors, fastifyDbSession } from 'fastify-db-session'
import type { DbHistogram, DbPoolStats, DbRouteConfig, DbSessionCommonOptions, DbSessionError, DbUnitOfWork, FastifyDbSession, FastifyDbSessionOptions, OpenTelemetryMeterProvider, OpenTelemetryTracerProvider, PromClientRegistry, RegisteredDatabase } from 'fastify-db-session'
import { Registry as PromRegistry, register as promRegister } from 'prom-client'
import { metrics as otelMetrics, trace as otelTrace } from '@opentelemetry/api'
import { MeterProvider as SdkMeterProvider } from '@opentelemetry/sdk-metrics'
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base'
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node'
import { errors as runtimeErrors } from '../../lib/errors.js'

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false
function expectTrue<T extends true> (_proof?: T): void {}

interface Database {
  items: { id: Generated<number>, name: string }
}
declare module 'fastify-db-session' {
  interface DbSessionRegister { database: Database }
}

expectTrue<Equal<typeof dbSession, typeof fastifyDbSession>>()
expectTrue<Equal<RegisteredDatabase, Database>>()

const app = Fastify()
await app.register(dbSession, { connectionString: 'postgres://localhost/app', maxConnections: 5, isolationLevel: 'serializable' })
await app.register(dbSession, { pool: new pg.Pool() })
await app.register(dbSession, { pool: { host: 'localhost', max: 3 }, commitWhen: (_request, reply) => reply.statusCode < 300 })
await app.register(dbSession, { connectionString: 'postgres://x', context: { 'app.tenant_id': (request) => request.headers['x-tenant'] as string, 'app.n': () => 1 } })
await app.register(dbSession, { connectionString: 'postgres://x', pool: { ssl: false, application_name: 'api' } })
await app.register(dbSession, { pool: new pg.Pool(), acquireTimeoutMillis: 100, closeTimeoutMillis: 100 })
await app.register(dbSession, { connectionString: 'postgres://x', acquireTimeoutMillis: 100, connectTimeoutMillis: 3000 })
await app.register(dbSession, { pool: { host: 'db' }, connectTimeoutMillis: 3000 })
// pg-cursor's class, for stream()
await app.register(dbSession, { connectionString: 'postgres://x', cursor: Cursor })
// @ts-expect-error cursor is pg-cursor's class, not its name
await app.register(dbSession, { connectionString: 'postgres://x', cursor: 'pg-cursor' })
// Options that always fail registration do not compile:
// @ts-expect-error no options: give connectionString or pool
await app.register(dbSession)
// @ts-expect-error no connectionString and no pool
await app.register(dbSession, {})
// @ts-expect-error no connectionString and no pool
await app.register(dbSession, { maxConnections: 5 })
// @ts-expect-error a connectionString beside an existing pg.Pool
await app.register(dbSession, { connectionString: 'postgres://x', pool: new pg.Pool() })
// @ts-expect-error a connectionString given twice
await app.register(dbSession, { connectionString: 'postgres://x', pool: { connectionString: 'postgres://y' } })
// @ts-expect-error an existing pg.Pool is sized on the pool itself
await app.register(dbSession, { pool: new pg.Pool(), maxConnections: 5 })
// @ts-expect-error an existing pg.Pool is sized on the pool itself
await app.register(dbSession, { pool: new pg.Pool(), idleTimeoutMillis: 5 })
// @ts-expect-error an existing pg.Pool makes its own connections: connectTimeoutMillis is set on it (connectionTimeoutMillis)
await app.register(dbSession, { pool: new pg.Pool(), connectTimeoutMillis: 5 })
// @ts-expect-error an existing pg.Pool is sized on the pool itself
const badPoolLifetime: FastifyDbSessionOptions = { pool: new pg.Pool(), maxLifetimeSeconds: 5 }
// @ts-expect-error no connection
const noConnection: FastifyDbSessionOptions = { name: 'primary' }
// @ts-expect-error context values are functions of the request
await app.register(dbSession, { connectionString: 'postgres://x', context: { 'app.tenant_id': 'acme' } })
// @ts-expect-error a context function returns a scalar
await app.register(dbSession, { connectionString: 'postgres://x', context: { 'app.tenant_id': () => ({ id: 1 }) } })
// @ts-expect-error maxConnections is a number
await app.register(dbSession, { connectionString: 'postgres://x', maxConnections: '5' })
// @ts-expect-error isolationLevel is one of PostgreSQL's levels
await app.register(dbSession, { connectionString: 'postgres://x', isolationLevel: 'snapshot' })
// @ts-expect-error commitWhen returns a boolean
const badCommitWhen: FastifyDbSessionOptions = { connectionString: 'postgres://x', commitWhen: () => 'yes' }

app.post('/items', async (request) => {
  expectTrue<Equal<typeof request.db, Transaction<Database>>>()
  const row = await request.db.insertInto('items').values({ name: 'x' }).returningAll().executeTakeFirstOrThrow()
  expectTrue<Equal<typeof row, { id: number, name: string }>>()
  // @ts-expect-error no such table
  await request.db.selectFrom('nope').selectAll().execute()
  return row
})

app.get('/off', { config: { db: false } }, async () => 'ok')
app.get('/ro', { config: { db: { accessMode: 'read only', isolationLevel: 'repeatable read' } } }, async () => 'ok')
app.get('/ro-autocommit', { config: { db: { accessMode: 'read only', autocommit: true } } }, async () => 'ok')
app.get('/ro-early', { config: { db: { accessMode: 'read only', respondBeforeCommit: true } } }, async () => 'ok')
await app.register(dbSession, { connectionString: 'postgres://x', respondBeforeCommit: true })
// @ts-expect-error respondBeforeCommit is a boolean
app.get('/ro-early-bad', { config: { db: { respondBeforeCommit: 'yes' } } }, async () => 'ok')
// @ts-expect-error autocommit is a boolean
app.get('/ro-autocommit-bad', { config: { db: { accessMode: 'read only', autocommit: 'yes' } } }, async () => 'ok')
app.get('/typed-config', async (request) => {
  expectTrue<Equal<typeof request.routeOptions.config.db, DbRouteConfig | undefined>>()
  return 'ok'
})
const routeConfig: FastifyContextConfig = { db: { accessMode: 'read only' } }
// @ts-expect-error config.db takes only the transaction settings (refused at runtime too, when the route is declared)
const misspeltRouteConfig: FastifyContextConfig = { db: { isolationLvl: 'serializable' } }
// @ts-expect-error config.db is false or settings, never true
const badRouteConfig: FastifyContextConfig = { db: true }

expectTrue<Equal<typeof app.db.kysely, Kysely<Database>>>()
expectTrue<Equal<typeof app.db.pool, pg.Pool>>()
const stats: DbPoolStats = app.db.stats()
expectTrue<Equal<typeof stats.active, number>>()
expectTrue<Equal<keyof DbPoolStats, 'total' | 'idle' | 'active' | 'waiting' | 'max' | 'acquires' | 'commits' | 'rollbacks' | 'commitFailures' |
'acquireTimeouts' | 'destroyed' | 'leaks' | 'aborts' | 'retries' | 'idleErrors' | 'connectionsCreated' | 'connectionsRemoved' | 'circuitOpen' |
'circuitRejections' | 'callbackErrors' | 'acquireWaitSeconds' | 'holdSeconds' | 'role' | 'replicaReads' | 'replicaFallbacks' | 'replicaWaitSeconds' | 'replicas'>>()
expectTrue<Equal<typeof stats.holdSeconds, DbHistogram>>()
expectTrue<Equal<typeof stats.circuitOpen, boolean>>()
expectTrue<Equal<ReturnType<typeof app.db.metrics>, string>>()
expectTrue<Equal<typeof app.db.name, string>>()
const pingMillis: number = await app.db.ping({ timeoutMillis: 500 })
// @ts-expect-error ping takes an options object
await app.db.ping(500)
const exposition: string = combineMetrics(app.db, app.db)
expectTrue<Equal<typeof dbSession.combineMetrics, typeof combineMetrics>>()
const safetyNets: DbSessionCommonOptions = {
  statementTimeoutMillis: 5000,
  idleInTransactionTimeoutMillis: 10000,
  leakDetectionMillis: 2000,
  leakTimeoutMillis: 30000,
  circuitBreaker: { failureThreshold: 5 },
  startupCheck: { retries: 2, delayMillis: 100 },
  name: 'primary',
  metricsRoute: '/metrics'
}
await app.register(dbSession, { ...safetyNets, connectionString: 'postgres://x' })
// @ts-expect-error circuitBreaker takes a boolean or settings
const badBreaker: FastifyDbSessionOptions = { connectionString: 'postgres://x', circuitBreaker: 'on' }
const routeTimeouts: FastifyContextConfig = { db: { statementTimeoutMillis: 100, idleInTransactionTimeoutMillis: 1000 } }
const count: number = await app.db.transaction(async (trx) => {
  expectTrue<Equal<typeof trx, Transaction<Database>>>()
  return 1
}, { accessMode: 'read only', context: { 'app.tenant_id': '42', 'app.user_id': null } })
// @ts-expect-error the callback gets a transaction, not a string
await app.db.transaction(async (trx: string) => trx)
await app.db.transaction(async () => 1, { label: 'nightly cleanup' })
await app.db.transaction(async () => 1, { label: false })
// @ts-expect-error a label is a string or false
await app.db.transaction(async () => 1, { label: true })
await app.register(dbSession, { connectionString: 'postgres://x', applicationName: (request) => `${request.routeOptions.url ?? ''} ${request.id}` })
await app.register(dbSession, { connectionString: 'postgres://x', applicationName: false })
await app.register(dbSession, { connectionString: 'postgres://x', applicationName: true })
// @ts-expect-error applicationName is a function of the request, not a fixed string
await app.register(dbSession, { connectionString: 'postgres://x', applicationName: 'notes' })
await app.register(dbSession, { connectionString: 'postgres://x', preparedStatements: true })
await app.register(dbSession, { connectionString: 'postgres://x', preparedStatements: { max: 500 } })
// @ts-expect-error preparedStatements.max is a number of query texts
await app.register(dbSession, { connectionString: 'postgres://x', preparedStatements: { max: '500' } })

// Retries: a plugin option (with the backoff's base), per route, and per fastify.db.transaction.
const retrying: DbSessionCommonOptions = { retries: 3, retryDelayMillis: 50 }
await app.register(dbSession, { ...retrying, connectionString: 'postgres://x' })
app.post('/transfer', { config: { db: { isolationLevel: 'serializable', retries: 3 } } }, async () => 'ok')
const retried: number = await app.db.transaction(async () => 1, { isolationLevel: 'serializable', retries: 2 })
expectTrue<Equal<typeof stats.retries, number>>()
// @ts-expect-error retries is a number
const retriesAsText: FastifyContextConfig = { db: { retries: '3' } }
// @ts-expect-error retryDelayMillis is a plugin option, not a route's
const routeDelay: FastifyContextConfig = { db: { retryDelayMillis: 10 } }

const code = new errors.FST_DB_SESSION_ACQUIRE_TIMEOUT(100).code
expectTrue<Equal<typeof code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT'>>()
expectTrue<Equal<InstanceType<typeof errors.FST_DB_SESSION_SERIALIZATION_FAILURE>['statusCode'], 409>>()
// @ts-expect-error an acquire timeout's code is never another code
if (new errors.FST_DB_SESSION_ACQUIRE_TIMEOUT(100).code === 'FST_DB_SESSION_CLOSING') throw new Error('unreachable')
// @ts-expect-error codes are the plugin's own
if (new errors.FST_DB_SESSION_DEADLOCK().code === 'FST_DB_SESSION_DEADLOCKED') throw new Error('unreachable')
const invalidOption: TypeError = new errors.FST_DB_SESSION_INVALID_OPTION('x')
expectTrue<Equal<InstanceType<typeof errors.FST_DB_SESSION_INVALID_OPTION> extends TypeError & FastifyError ? true : false, true>>()
function statusOf (err: DbSessionError): 409 | 503 | 'other' {
  if (err.code === 'FST_DB_SESSION_ACQUIRE_TIMEOUT') {
    expectTrue<Equal<typeof err, InstanceType<typeof errors.FST_DB_SESSION_ACQUIRE_TIMEOUT>>>()
    return err.statusCode
  }
  if (err.code === 'FST_DB_SESSION_DEADLOCK') return err.statusCode
  return 'other'
}
function fromHandler (err: FastifyError): string {
  if (err instanceof errors.FST_DB_SESSION_STATEMENT_TIMEOUT) {
    expectTrue<Equal<typeof err.code, 'FST_DB_SESSION_STATEMENT_TIMEOUT'>>()
  }
  return err.code
}
// The declared classes are the runtime's: same codes, each with the same code and status.
type Runtime = typeof runtimeErrors
type Declared = typeof errors
type CodeAndStatus<E extends Record<string, new (...args: any[]) => { code: string, statusCode?: number }>> = {
  [K in keyof E]: [InstanceType<E[K]>['code'], InstanceType<E[K]>['statusCode']]
}
expectTrue<Equal<CodeAndStatus<Runtime>, CodeAndStatus<Declared>>>()
// @ts-expect-error there is no such error
const noSuchError = errors.FST_DB_SESSION_NOPE

// afterCommit, afterRollback and savepoint: on the request, on fastify.db, on transaction()'s unit.
app.post('/hooks', async (request) => {
  // Sync and async callbacks, whatever they return.
  request.afterCommit(() => {})
  request.afterCommit(async () => { await Promise.resolve() })
  request.afterRollback(() => 1)
  expectTrue<Equal<ReturnType<typeof request.afterCommit>, void>>()
  // @ts-expect-error a callback takes no arguments
  request.afterCommit((committed: boolean) => committed)
  // @ts-expect-error a callback is a function
  request.afterRollback('cleanup')

  const id = await request.savepoint(async (trx) => {
    expectTrue<Equal<typeof trx, Transaction<Database>>>()
    const row = await trx.insertInto('items').values({ name: 'x' }).returning('id').executeTakeFirstOrThrow()
    return row.id
  })
  expectTrue<Equal<typeof id, number>>()
  const plain: string = await request.savepoint(() => 'sync result')
  // @ts-expect-error the savepoint's transaction is typed with the database
  await request.savepoint((trx) => trx.selectFrom('nope').selectAll().execute())

  app.db.afterCommit(request, () => {})
  app.db.afterRollback(request, async () => {})
  const viaInstance = await app.db.savepoint(request, async (trx) => {
    expectTrue<Equal<typeof trx, Transaction<Database>>>()
    return 'ok' as const
  })
  expectTrue<Equal<typeof viaInstance, 'ok'>>()
  // @ts-expect-error the instance methods take the request first
  app.db.afterCommit(() => {})
  return { id, plain, viaInstance }
})

const hookedTotal: number = await app.db.transaction(async (trx, unit) => {
  expectTrue<Equal<typeof unit, DbUnitOfWork<Database>>>()
  unit.afterCommit(() => {})
  unit.afterRollback(async () => {})
  return unit.savepoint(async (sp) => {
    expectTrue<Equal<typeof sp, Transaction<Database>>>()
    await trx.insertInto('items').values({ name: 'y' }).execute()
    return 1
  })
})
// A callback that ignores the unit still compiles.
await app.db.transaction(async (trx) => trx.selectFrom('items').selectAll().execute())

function commitWhen (request: FastifyRequest, reply: FastifyReply): boolean {
  return request.method !== 'GET' && reply.statusCode < 400
}
export { hookedTotal, badBreaker, misspeltRouteConfig, badPoolLifetime, noConnection, fromHandler, invalidOption, statusOf, badCommitWhen, badRouteConfig, commitWhen, count, code, exposition, noSuchError, pingMillis, routeConfig, routeTimeouts, safetyNets, stats }
export { retried, retriesAsText, routeDelay }

// A second database (the decorator option): the app declares its decorators with its interface.
interface AnalyticsDatabase {
  events: { id: Generated<number>, name: string, at: Date }
}
declare module 'fastify' {
  interface FastifyRequest { readonly analytics: Transaction<AnalyticsDatabase> }
  interface FastifyInstance { analytics: FastifyDbSession<AnalyticsDatabase> }
  interface FastifyContextConfig { analytics?: DbRouteConfig }
}
await app.register(dbSession, { connectionString: 'postgres://localhost/analytics', decorator: 'analytics' })
await app.register(dbSession, { pool: new pg.Pool(), decorator: 'legacy', name: 'legacy' })
// @ts-expect-error decorator is a name
await app.register(dbSession, { connectionString: 'postgres://x', decorator: 42 })
app.post('/signup', { config: { db: { isolationLevel: 'serializable' }, analytics: { accessMode: 'read write' } } }, async (request) => {
  expectTrue<Equal<typeof request.analytics, Transaction<AnalyticsDatabase>>>()
  const item = await request.db.insertInto('items').values({ name: 'x' }).returning('id').executeTakeFirstOrThrow()
  await request.analytics.insertInto('events').values({ name: `item ${item.id}`, at: new Date() }).execute()
  // @ts-expect-error the main database's table is not in the analytics database
  await request.analytics.selectFrom('items').selectAll().execute()
  // @ts-expect-error nor the analytics table in the main one
  await request.db.selectFrom('events').selectAll().execute()
  return item
})
app.get('/no-analytics', { config: { analytics: false } }, async () => 'ok')
// @ts-expect-error config.analytics takes the transaction settings, as config.db does
const misspeltAnalyticsConfig: FastifyContextConfig = { analytics: { isolationLvl: 'serializable' } }
expectTrue<Equal<typeof app.analytics.kysely, Kysely<AnalyticsDatabase>>>()
const eventCount: number = await app.analytics.transaction(async (trx) => {
  expectTrue<Equal<typeof trx, Transaction<AnalyticsDatabase>>>()
  return (await trx.selectFrom('events').selectAll().execute()).length
})
const bothPools: string = combineMetrics(app.db, app.analytics)
const withDecorator: DbSessionCommonOptions = { decorator: 'analytics', name: 'analytics' }
export { misspeltAnalyticsConfig, eventCount, bothPools, withDecorator }

// Observability: prom-client's Registry (and its global register) and OpenTelemetry's meter
// providers (the API's global one, the SDK's class) fit the options without the package's types
// depending on either library.
const promRegistry = new PromRegistry()
await app.register(dbSession, { connectionString: 'postgres://x', name: 'scraped', promClientRegistry: promRegistry })
await app.register(dbSession, { connectionString: 'postgres://x', name: 'global', promClientRegistry: promRegister })
const asOption: PromClientRegistry = promRegistry
// @ts-expect-error a registry, not prom-client's metrics text
await app.register(dbSession, { connectionString: 'postgres://x', promClientRegistry: await promRegistry.metrics() })
await app.register(dbSession, { connectionString: 'postgres://x', openTelemetry: { meterProvider: otelMetrics.getMeterProvider() } })
await app.register(dbSession, { connectionString: 'postgres://x', openTelemetry: { meterProvider: new SdkMeterProvider() } })
await app.register(dbSession, { connectionString: 'postgres://x', openTelemetry: false })
const provider: OpenTelemetryMeterProvider = new SdkMeterProvider()
// @ts-expect-error openTelemetry takes { meterProvider }, not the provider itself
await app.register(dbSession, { connectionString: 'postgres://x', openTelemetry: provider })
// @ts-expect-error true is not an option: give the provider to use
await app.register(dbSession, { connectionString: 'postgres://x', openTelemetry: true })
// Tracer providers: the API's global one, the SDK's classes; with or without a meter provider.
await app.register(dbSession, { connectionString: 'postgres://x', openTelemetry: { tracerProvider: otelTrace.getTracerProvider() } })
await app.register(dbSession, { connectionString: 'postgres://x', openTelemetry: { tracerProvider: new BasicTracerProvider() } })
await app.register(dbSession, { connectionString: 'postgres://x', openTelemetry: { meterProvider: provider, tracerProvider: new NodeTracerProvider() } })
const tracerProvider: OpenTelemetryTracerProvider = new NodeTracerProvider()
// @ts-expect-error an object with neither provider says nothing: give one, or false
await app.register(dbSession, { connectionString: 'postgres://x', openTelemetry: {} })
// @ts-expect-error a meter provider is no tracer provider
await app.register(dbSession, { connectionString: 'postgres://x', openTelemetry: { tracerProvider: provider } })
// @ts-expect-error the tracer provider goes under tracerProvider
await app.register(dbSession, { connectionString: 'postgres://x', openTelemetry: tracerProvider })
const observability: Pick<DbSessionCommonOptions, 'promClientRegistry' | 'openTelemetry'> = { promClientRegistry: asOption, openTelemetry: { meterProvider: provider, tracerProvider } }
await app.register(dbSession, { ...observability, connectionString: 'postgres://x' })
