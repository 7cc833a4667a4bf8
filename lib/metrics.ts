import type pg from 'pg'
import type { DbPoolStats } from '../index.js'
import { Histogram } from './histogram.js'

/**
 * The telemetry seam: every event the plugin reports, reported once, where it happens. A sink is
 * called directly (no emitter, nothing allocated per event), and no event is per query: a
 * checkout, a finished transaction, a pool event. `Counters` below is the sink behind stats()
 * and metrics(); another sink (OpenTelemetry, in otel.ts) implements the same interface and
 * is handed to the registration beside it, without touching the unit of work.
 */
export interface Telemetry {
  /** A connection was checked out after waiting `waitSeconds`. */
  acquired (waitSeconds: number): void
  /** An acquire gave up at the deadline (ours, pg-pool's, or PgBouncer's query_wait_timeout). */
  acquireTimedOut (): void
  /** The open circuit breaker refused an acquire at once. */
  circuitRejected (): void
  /** A checkout ended after `holdSeconds`; `destroyed` when the connection was closed rather than returned. */
  released (holdSeconds: number, destroyed: boolean): void
  /** A unit of work that opened a transaction ended (see TransactionEnd). */
  transactionEnded (end: TransactionEnd): void
  /** A unit of work was rolled back because its client went away. */
  aborted (): void
  /** A unit of work that ended in a serialization failure or deadlock is being run again. */
  retried (): void
  /** `count` connections were held past the leak threshold, or still checked out at close. */
  leaked (count: number): void
  /** An idle pooled connection failed. */
  idleError (): void
  /** The pool opened a connection, in `seconds` (null when not timed: a user's own pool). */
  connectionCreated (seconds: number | null): void
  /** The pool closed a connection. */
  connectionRemoved (): void
  /** An afterCommit or afterRollback callback threw or rejected (it was logged; the others ran). */
  callbackFailed (): void
}

/** How an opened transaction ended; 'commit failed' was rolled back by PostgreSQL, 'outcome unknown' maybe not. */
export type TransactionEnd = 'committed' | 'rolled back' | 'commit failed' | 'outcome unknown'

/** The counting sink: lifetime counters and histograms, plain fields so that an event costs an increment. */
export class Counters implements Telemetry {
  acquires = 0
  commits = 0
  rollbacks = 0
  commitFailures = 0
  acquireTimeouts = 0
  destroyed = 0
  leaks = 0
  aborts = 0
  retries = 0
  idleErrors = 0
  connectionsCreated = 0
  connectionsRemoved = 0
  circuitRejections = 0
  callbackErrors = 0
  /** Seconds from asking for a connection to having it. */
  readonly acquireWait = new Histogram()
  /** Seconds a connection stayed checked out. */
  readonly hold = new Histogram()

  acquired (waitSeconds: number): void {
    this.acquires++
    this.acquireWait.observe(waitSeconds)
  }

  acquireTimedOut (): void {
    this.acquireTimeouts++
  }

  circuitRejected (): void {
    this.circuitRejections++
  }

  released (holdSeconds: number, destroyed: boolean): void {
    this.hold.observe(holdSeconds)
    if (destroyed) this.destroyed++
  }

  transactionEnded (end: TransactionEnd): void {
    if (end === 'committed') {
      this.commits++
      return
    }
    // A failed COMMIT counts as a rollback too, unless nobody can say it was one.
    if (end !== 'rolled back') this.commitFailures++
    if (end !== 'outcome unknown') this.rollbacks++
  }

  aborted (): void {
    this.aborts++
  }

  retried (): void {
    this.retries++
  }

  leaked (count: number): void {
    this.leaks += count
  }

  idleError (): void {
    this.idleErrors++
  }

  connectionCreated (_seconds: number | null): void {
    this.connectionsCreated++
  }

  connectionRemoved (): void {
    this.connectionsRemoved++
  }

  callbackFailed (): void {
    this.callbackErrors++
  }
}

const NO_WAITS = new Histogram().snapshot()

/** stats(): the pool's gauges, read now, beside the counters; replica-stats.ts fills in the replicas' part. */
export function poolStats (pool: pg.Pool, counters: Counters, circuitOpen: boolean): DbPoolStats {
  const total = pool.totalCount
  const idle = pool.idleCount
  return {
    total,
    idle,
    active: total - idle,
    waiting: pool.waitingCount,
    max: pool.options.max,
    acquires: counters.acquires,
    commits: counters.commits,
    rollbacks: counters.rollbacks,
    commitFailures: counters.commitFailures,
    acquireTimeouts: counters.acquireTimeouts,
    destroyed: counters.destroyed,
    leaks: counters.leaks,
    aborts: counters.aborts,
    retries: counters.retries,
    idleErrors: counters.idleErrors,
    connectionsCreated: counters.connectionsCreated,
    connectionsRemoved: counters.connectionsRemoved,
    circuitOpen,
    circuitRejections: counters.circuitRejections,
    callbackErrors: counters.callbackErrors,
    acquireWaitSeconds: counters.acquireWait.snapshot(),
    holdSeconds: counters.hold.snapshot(),
    role: 'primary',
    replicaReads: 0,
    replicaFallbacks: { down: 0, lag: 0, waitTimedOut: 0, ahead: 0 },
    replicaWaitSeconds: NO_WAITS,
    replicas: []
  }
}
