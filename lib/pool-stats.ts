import type pg from 'pg'
import type { DbPoolStats } from '../index.js'

/** Lifetime counters; plain fields so that counting costs one increment. */
export class PoolCounters {
  acquires = 0
  commits = 0
  rollbacks = 0
  commitFailures = 0
  acquireTimeouts = 0
  destroyed = 0
  leaks = 0
}

/** The pool's gauges, read now, beside the counters. */
export function poolStats (pool: pg.Pool, counters: PoolCounters): DbPoolStats {
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
    leaks: counters.leaks
  }
}
