import type { Attributes, BatchObservableResult, Histogram, Meter, MeterProvider, Observable } from '@opentelemetry/api'
import type { DbPoolStats, OpenTelemetryMeterProvider } from '../index.js'
import { DEFAULT_BUCKETS } from './histogram.js'
import { Counters } from './metrics.js'

// The semantic conventions' attributes of database client connection metrics.
const POOL_NAME = 'db.client.connection.pool.name'
const STATE = 'db.client.connection.state'

/** Our figures without a standard name: `fastify_db_session.` and metrics()'s name without `_total`, so a Prometheus export names them as metrics() does. */
const OWN_COUNTERS: ReadonlyArray<[name: string, unit: string, description: string, read: (stats: DbPoolStats) => number]> = [
  ['acquires', '{connection}', 'Connections checked out.', (stats) => stats.acquires],
  ['commits', '{transaction}', 'Transactions committed.', (stats) => stats.commits],
  ['rollbacks', '{transaction}', 'Transactions rolled back (failed COMMITs included).', (stats) => stats.rollbacks],
  ['commit_failures', '{transaction}', 'COMMITs that failed.', (stats) => stats.commitFailures],
  ['aborts', '{transaction}', 'Transactions rolled back because the client went away or the socket timed out.', (stats) => stats.aborts],
  ['retries', '{transaction}', 'Units of work run again after a serialization failure or deadlock (the retries option).', (stats) => stats.retries],
  ['callback_errors', '{callback}', 'afterCommit and afterRollback callbacks that threw or rejected.', (stats) => stats.callbackErrors],
  ['leaks', '{connection}', 'Connections held past the leak threshold, or still checked out at close.', (stats) => stats.leaks],
  ['idle_errors', '{error}', 'Errors reported by idle pooled connections.', (stats) => stats.idleErrors],
  ['connections_created', '{connection}', 'Connections the pool opened.', (stats) => stats.connectionsCreated],
  ['connections_removed', '{connection}', 'Connections the pool closed.', (stats) => stats.connectionsRemoved],
  ['connections_destroyed', '{connection}', 'Connections destroyed instead of returned because their state was in doubt.', (stats) => stats.destroyed],
  ['circuit_rejections', '{acquire}', 'Acquires refused at once while the circuit breaker was open.', (stats) => stats.circuitRejections]
]

/**
 * The counters behind stats(), which also report the pool to OpenTelemetry through the app's
 * meter provider. Everything but three histograms is an observable instrument, read from stats()
 * when the SDK collects; the wait and use times are recorded at each checkout, the create time at
 * each new connection (of an owned pool), as OpenTelemetry has no observable histogram. Without the openTelemetry option the plain Counters serve, so nothing is
 * added to an event, and @opentelemetry/api is never loaded (this file only uses its types).
 */
export class OpenTelemetryCounters extends Counters {
  readonly #meter: Meter
  readonly #pool: Attributes
  readonly #waitTime: Histogram
  readonly #useTime: Histogram
  readonly #createTime: Histogram

  constructor (provider: OpenTelemetryMeterProvider, poolName: string) {
    super()
    this.#meter = (provider as MeterProvider).getMeter('fastify-db-session')
    this.#pool = { [POOL_NAME]: poolName }
    const advice = { explicitBucketBoundaries: DEFAULT_BUCKETS }
    this.#waitTime = this.#meter.createHistogram('db.client.connection.wait_time', { unit: 's', description: 'The time it took to obtain an open connection from the pool.', advice })
    this.#useTime = this.#meter.createHistogram('db.client.connection.use_time', { unit: 's', description: 'The time between borrowing a connection and returning it to the pool.', advice })
    this.#createTime = this.#meter.createHistogram('db.client.connection.create_time', { unit: 's', description: 'The time it took to create a new connection.', advice })
  }

  override acquired (waitSeconds: number): void {
    super.acquired(waitSeconds)
    this.#waitTime.record(waitSeconds, this.#pool)
  }

  override released (holdSeconds: number, destroyed: boolean): void {
    super.released(holdSeconds, destroyed)
    this.#useTime.record(holdSeconds, this.#pool)
  }

  override connectionCreated (seconds: number | null): void {
    super.connectionCreated(seconds)
    if (seconds !== null) this.#createTime.record(seconds, this.#pool)
  }

  /** Reports `stats()` at each collection, until the returned function is called (at close). */
  observe (stats: () => DbPoolStats): () => void {
    const meter = this.#meter
    const pool = this.#pool
    const idle = { ...pool, [STATE]: 'idle' }
    const used = { ...pool, [STATE]: 'used' }
    const count = meter.createObservableUpDownCounter('db.client.connection.count', { unit: '{connection}', description: 'The number of connections that are currently in state described by the state attribute.' })
    const max = meter.createObservableUpDownCounter('db.client.connection.max', { unit: '{connection}', description: 'The maximum number of open connections allowed.' })
    const pending = meter.createObservableUpDownCounter('db.client.connection.pending_requests', { unit: '{request}', description: 'The number of current pending requests for an open connection.' })
    const timeouts = meter.createObservableCounter('db.client.connection.timeouts', { unit: '{timeout}', description: 'The number of connection timeouts that have occurred trying to obtain a connection from the pool.' })
    const circuitOpen = meter.createObservableGauge('fastify_db_session.circuit_open', { unit: '1', description: '1 while the circuit breaker fails acquires fast, else 0.' })
    const own = OWN_COUNTERS.map(([name, unit, description, read]) => ({ read, counter: meter.createObservableCounter(`fastify_db_session.${name}`, { unit, description }) }))
    const observables: Observable[] = [count, max, pending, timeouts, circuitOpen, ...own.map(({ counter }) => counter)]
    const callback = (result: BatchObservableResult): void => {
      const now = stats()
      result.observe(count, now.idle, idle)
      result.observe(count, now.active, used)
      result.observe(max, now.max, pool)
      result.observe(pending, now.waiting, pool)
      result.observe(timeouts, now.acquireTimeouts, pool)
      result.observe(circuitOpen, Number(now.circuitOpen), pool)
      for (const { read, counter } of own) result.observe(counter, read(now), pool)
    }
    meter.addBatchObservableCallback(callback, observables)
    return () => meter.removeBatchObservableCallback(callback, observables)
  }
}
