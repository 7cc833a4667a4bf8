import type pg from 'pg'
import type { DbPoolStats, DbReplicaStats } from '../index.js'
import { formatLsn } from './lsn.js'
import { poolStats } from './metrics.js'
import type { Counters } from './metrics.js'
import type { ReplicaRouter } from './replica-router.js'

/** One replica's pool and counters, with its `pool` label. */
export interface ReplicaPoolCounters { name: string, pool: pg.Pool, counters: Counters }

/**
 * The primary's stats with the router's counters and each replica's own stats (its pool, its
 * counters, and its health as last checked), for stats() and metrics().
 */
export function withReplicas (primary: DbPoolStats, router: ReplicaRouter, replicas: readonly ReplicaPoolCounters[]): DbPoolStats {
  const { counters, health } = router
  const replicaStats = replicas.map(({ name, pool, counters: own }, index): DbReplicaStats => {
    const { leftOut, lagMillis, replayed } = health.replicas[index]
    return {
      ...poolStats(pool, own, false),
      role: 'replica',
      replicaReads: counters.replicaReads[index],
      name,
      up: leftOut !== 'down',
      leftOut,
      lagMillis,
      lsn: replayed === null ? null : formatLsn(replayed)
    }
  })
  return {
    ...primary,
    replicaReads: counters.replicaReads.reduce((sum, reads) => sum + reads, 0),
    replicaFallbacks: { ...counters.fallbacks },
    replicaWaitSeconds: counters.waits.snapshot(),
    replicas: replicaStats
  }
}
