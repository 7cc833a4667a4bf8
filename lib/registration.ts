import { DummyDriver, Kysely, PostgresDialect } from 'kysely'
import type { PostgresPool } from 'kysely'
import type pg from 'pg'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { FastifyDbSession, FastifyDbSessionOptions } from '../index.js'
import { CircuitBreaker } from './circuit-breaker.js'
import { connectSeconds } from './connect-time.js'
import { ConnectionSource } from './connection-source.js'
import { checkDecoratorFree, markOurs } from './decorator-name.js'
import { ClosingError, InvalidOptionError } from './errors.js'
import { checkStartup, ping } from './health.js'
import { LeakWatch } from './leak-watch.js'
import { Counters, poolStats } from './metrics.js'
import type { Telemetry } from './metrics.js'
import { OpenTelemetryCounters } from './otel-metrics.js'
import { unitTracing } from './otel-tracing.js'
import { resolveOptions } from './options.js'
import { destroyConnecting, poolClientClass } from './pg-internals.js'
import { prometheusText } from './prometheus.js'
import { reportToPromClient } from './prom-client.js'
import { ReplicaHealth } from './replica-health.js'
import { ReplicaRouter } from './replica-router.js'
import { withReplicas } from './replica-stats.js'
import type { ReplicaPoolCounters } from './replica-stats.js'
import { installRequestScope } from './request-scope.js'
import { Retrier } from './retry.js'
import { standaloneTransaction } from './standalone-transaction.js'
import { routeSettingsResolver } from './transaction-settings.js'
import type { WorkRuntime } from './unit-of-work.js'
import type { KyselyRuntime } from './kysely-executor.js'

/**
 * One registration of the plugin: its pool and connection source, its Kysely, request.db (under
 * symbols of its own), fastify.db (transaction(), stats(), metrics(), ping()), and its close;
 * `db` is the `decorator` option's name. Nothing is shared with another registration.
 */
export async function dbSession (fastify: FastifyInstance, options: FastifyDbSessionOptions): Promise<void> {
  const resolved = resolveOptions(options)
  const { pool, closeTimeoutMillis, decorator } = resolved
  // Before anything is connected or decorated: pg.Pool opens no connection until asked.
  checkDecoratorFree(fastify, decorator)
  // The telemetry sinks: the counters behind stats() and metrics() (which also report to
  // OpenTelemetry when asked to). Units of work report to the Telemetry interface.
  const openTelemetry = resolved.meterProvider === null ? null : new OpenTelemetryCounters(resolved.meterProvider, resolved.name)
  const counters = openTelemetry ?? new Counters()
  const telemetry = counters
  const breaker = resolved.circuitBreaker === null ? null : new CircuitBreaker(resolved.circuitBreaker)
  const deadlines = { own: resolved.acquireTimeoutMillis, reported: resolved.reportedAcquireTimeoutMillis, connect: resolved.connectTimeoutMillis, cancel: closeTimeoutMillis }
  const source = new ConnectionSource(pool, telemetry, fastify.log, deadlines, breaker, resolved.preparedStatements)
  const tracing = await unitTracing(resolved.tracerProvider, resolved.name)
  // Each attempt may take as long as the pool's connects do (the owned pool's connect timeout).
  if (resolved.startupCheck !== null) await checkStartup(pool, resolved.startupCheck, resolved.connectTimeoutMillis || resolved.reportedAcquireTimeoutMillis)

  const stopListening = listenToPool(pool, telemetry)

  // Read replicas: a connection source each (same deadlines, no circuit breaker: a failing replica
  // is left out by its health instead), their health read by a timer, and the router that places
  // read only work. A replica that is down at startup is no startup failure: reads go to the primary.
  const replicas: Array<ReplicaPoolCounters & { owned: boolean, source: ConnectionSource, stopListening: () => void }> = []
  let router: ReplicaRouter | null = null
  if (resolved.replicas !== null) {
    for (const [index, replica] of resolved.replicas.pools.entries()) {
      const replicaCounters = new Counters()
      const replicaDeadlines = { own: replica.acquireTimeoutMillis, reported: replica.reportedAcquireTimeoutMillis, connect: replica.connectTimeoutMillis, cancel: closeTimeoutMillis }
      replicas.push({
        name: `${resolved.name}-replica-${index + 1}`,
        pool: replica.pool,
        counters: replicaCounters,
        owned: replica.owned,
        source: new ConnectionSource(replica.pool, replicaCounters, fastify.log, replicaDeadlines, null, resolved.preparedStatements),
        stopListening: listenToPool(replica.pool, replicaCounters)
      })
    }
    const health = new ReplicaHealth(pool, replicas.map(({ source }) => source), resolved.replicas, fastify.log)
    router = new ReplicaRouter(source, health, resolved.replicas)
    await health.start()
  }

  // fastify.db.kysely runs on Kysely's own driver, fed by our leases: same deadline, listening and release rules.
  // Its Client is what Kysely opens a control connection with, to cancel or kill a statement
  // aborted by a signal: without it Kysely would wait for a pooled one (inside a transaction,
  // its own, busy with the statement: nothing would be canceled).
  const leasingPool = { connect: () => source.acquire(), end: async () => {}, options: pool.options, Client: poolClientClass(pool) }
  const { cursor } = resolved
  const dialect = new PostgresDialect({ pool: leasingPool as unknown as PostgresPool, ...(cursor === null ? {} : { cursor }) })
  const kysely = new Kysely<any>({ dialect, plugins: resolved.plugins })
  const runtime: WorkRuntime & KyselyRuntime = {
    source,
    executor: kysely.getExecutor(),
    props: { config: { dialect }, dialect, driver: new DummyDriver() },
    cursor,
    live: new Set(),
    leakWatch: resolved.leak === null ? null : new LeakWatch(resolved.leak, telemetry),
    tracing,
    router
  }

  const defaults = resolved.transactionDefaults
  const routeSettings = routeSettingsResolver(defaults, decorator)
  const retrier = new Retrier(resolved.retry, telemetry, decorator)
  const callbacks = installRequestScope(fastify, runtime, routeSettings, resolved.commitWhen, resolved.contextFor, retrier, decorator)
  // request.afterCommit, afterRollback and savepoint belong to the registration named 'db' (the
  // default); every registration offers them as fastify.<decorator>.afterCommit(request, fn) and so on.
  if (decorator === 'db') {
    fastify.decorateRequest('afterCommit', function (this: FastifyRequest, fn: () => unknown) { callbacks.afterCommit(this, fn) })
    fastify.decorateRequest('afterRollback', function (this: FastifyRequest, fn: () => unknown) { callbacks.afterRollback(this, fn) })
    fastify.decorateRequest('savepoint', function (this: FastifyRequest, fn: (trx: any) => unknown) { return callbacks.savepoint(this, fn) })
  }

  const transaction = standaloneTransaction(runtime, defaults, fastify.log, retrier, decorator, resolved.namesTransactions)

  const stats = router === null
    ? () => poolStats(pool, counters, source.circuitOpen)
    : () => withReplicas(poolStats(pool, counters, source.circuitOpen), router, replicas)
  const db: FastifyDbSession<any> = {
    kysely,
    pool,
    name: resolved.name,
    transaction,
    afterCommit: callbacks.afterCommit,
    afterRollback: callbacks.afterRollback,
    savepoint: callbacks.savepoint,
    stats,
    metrics: () => prometheusText([{ name: resolved.name, stats: stats() }]),
    ping: async (options) => ping(source, pingTimeout(options))
  }
  markOurs(db)
  fastify.decorate(decorator, db)
  if (resolved.promClientRegistry !== null) {
    const stopReporting = reportToPromClient(resolved.promClientRegistry, { name: resolved.name, stats })
    fastify.addHook('onClose', async () => { stopReporting() })
  }
  if (openTelemetry !== null) {
    const stopObserving = openTelemetry.observe(stats)
    fastify.addHook('onClose', async () => { stopObserving() })
  }
  if (resolved.metricsRoute !== null) {
    fastify.get(resolved.metricsRoute, { config: { [decorator]: false } }, async (_request, reply) => {
      return reply.type('text/plain; version=0.0.4; charset=utf-8').send(db.metrics())
    })
  }

  // A checked-out client is listened to by its lease; an idle one that fails must not crash the process.
  function listenToPool (listened: pg.Pool, poolTelemetry: Telemetry): () => void {
    const onIdleError = (error: Error): void => {
      poolTelemetry.idleError()
      fastify.log.warn({ err: error }, 'fastify-db-session: an idle database connection failed; the pool dropped it')
    }
    const onConnect = (client: object): void => { poolTelemetry.connectionCreated(connectSeconds(client)) }
    const onRemove = (): void => { poolTelemetry.connectionRemoved() }
    listened.on('error', onIdleError)
    listened.on('connect', onConnect)
    listened.on('remove', onRemove)
    return () => {
      listened.removeListener('error', onIdleError)
      listened.removeListener('connect', onConnect)
      listened.removeListener('remove', onRemove)
    }
  }

  let closeTimer: NodeJS.Timeout | undefined
  fastify.addHook('preClose', (done) => {
    // Requests still running get closeTimeoutMillis to finish; a request stuck in the database
    // would otherwise keep the server from closing.
    closeTimer = setTimeout(() => {
      for (const each of [source, ...replicas.map((replica) => replica.source)]) each.destroyCheckedOut()
    }, closeTimeoutMillis).unref()
    // Nothing runs again once closing: a request or transaction in its backoff answers its last failure now.
    retrier.stop()
    done()
  })
  fastify.addHook('onClose', async () => {
    clearTimeout(closeTimer)
    source.close()
    router?.health.close()
    for (const replica of replicas) replica.source.close()
    const rollbacks = [...runtime.live].map((work) => work.interrupt(new ClosingError()))
    await within(closeTimeoutMillis, Promise.all(rollbacks))
    await within(closeTimeoutMillis, Promise.all([source, ...replicas.map((replica) => replica.source)].map((each) => each.destroyCheckedOut())))
    if (resolved.ownsPool) {
      // The listener stays: pg-pool's end() resolves while its sockets may still report errors.
      await within(closeTimeoutMillis, endOwnedPool(pool))
    } else {
      stopListening()
    }
    await closeReplicas(replicas, closeTimeoutMillis)
  })
}

/**
 * Ends the replica pools the plugin made, as the primary's; a user's replica pool is theirs to end,
 * and only loses our listeners. Replica units of work were rolled back with the others (runtime.live).
 */
async function closeReplicas (replicas: ReadonlyArray<{ pool: pg.Pool, owned: boolean, stopListening: () => void }>, closeTimeoutMillis: number): Promise<void> {
  for (const replica of replicas) if (!replica.owned) replica.stopListening()
  await within(closeTimeoutMillis, Promise.all(replicas.filter(({ owned }) => owned).map(({ pool }) => endOwnedPool(pool))))
}

/** Ends a pool the plugin made, connects still under way included (a connection made after close() would outlive it). */
function endOwnedPool (pool: pg.Pool): Promise<void> {
  const ended = pool.end()
  destroyConnecting(pool)
  return ended
}

function pingTimeout (options: { timeoutMillis?: number } | undefined): number {
  const timeout = options?.timeoutMillis ?? 2000
  if (!Number.isSafeInteger(timeout) || timeout < 1) {
    throw new InvalidOptionError(`fastify.db.ping: timeoutMillis must be an integer of at least 1; instead got '${String(timeout)}'`)
  }
  return timeout
}

/** Waits for `work`, but never longer than `millis`. */
async function within (millis: number, work: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<void>((resolve) => { timer = setTimeout(resolve, millis) })
  await Promise.race([work, deadline])
  clearTimeout(timer)
}
