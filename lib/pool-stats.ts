import type pg from 'pg'
import type { DbPoolStats } from '../index.js'
import { Histogram } from './histogram.js'

/** Lifetime counters and histograms; plain fields so that counting costs one increment. */
export class PoolCounters {
  acquires = 0
  commits = 0
  rollbacks = 0
  commitFailures = 0
  acquireTimeouts = 0
  destroyed = 0
  leaks = 0
  aborts = 0
  idleErrors = 0
  connectionsCreated = 0
  connectionsRemoved = 0
  circuitRejections = 0
  /** Seconds from asking for a connection to having it. */
  readonly acquireWait = new Histogram()
  /** Seconds a connection stayed checked out. */
  readonly hold = new Histogram()
}

/** The pool's gauges, read now, beside the counters. */
export function poolStats (pool: pg.Pool, counters: PoolCounters, circuitOpen: boolean): DbPoolStats {
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
    idleErrors: counters.idleErrors,
    connectionsCreated: counters.connectionsCreated,
    connectionsRemoved: counters.connectionsRemoved,
    circuitOpen,
    circuitRejections: counters.circuitRejections,
    acquireWaitSeconds: counters.acquireWait.snapshot(),
    holdSeconds: counters.hold.snapshot()
  }
}
