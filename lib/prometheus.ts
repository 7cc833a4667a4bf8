import type { DbPoolStats, DbReplicaStats } from '../index.js'
import type { HistogramSnapshot } from './histogram.js'

/** One line of a metric: an optional name suffix (`_bucket`), labels beyond `pool`, the value. */
export interface Sample { suffix?: string, labels?: Record<string, string | number>, value: number }
type Pools = ReadonlyArray<{ name: string, stats: DbPoolStats }>

/** One metric family: its full name, type and help, and its samples for one pool's stats. */
export interface MetricFamily {
  name: string
  type: 'counter' | 'gauge' | 'histogram'
  help: string
  samples: (stats: DbPoolStats) => Sample[]
}

const PREFIX = 'fastify_db_session_'

const gauge = (name: string, help: string, read: (stats: DbPoolStats) => number): MetricFamily =>
  ({ name: PREFIX + name, type: 'gauge', help, samples: (stats) => [{ value: read(stats) }] })
const counter = (name: string, help: string, read: (stats: DbPoolStats) => number): MetricFamily =>
  ({ name: PREFIX + name + '_total', type: 'counter', help, samples: (stats) => [{ value: read(stats) }] })
const histogram = (name: string, help: string, read: (stats: DbPoolStats) => HistogramSnapshot): MetricFamily =>
  ({ name: PREFIX + name, type: 'histogram', help, samples: (stats) => histogramSamples(read(stats)) })

/**
 * Every metric the plugin exposes, in one table: metrics() renders it as text, and the prom-client
 * collector (prom-client.ts) hands the same families to a prom-client Registry, so both say the same.
 */
export const METRIC_FAMILIES: readonly MetricFamily[] = [
  {
    name: PREFIX + 'connections',
    type: 'gauge',
    help: 'Connections open in the pool, by state.',
    samples: (stats) => [{ labels: { state: 'idle' }, value: stats.idle }, { labels: { state: 'active' }, value: stats.active }]
  },
  gauge('max_connections', 'Most connections the pool opens.', (stats) => stats.max),
  gauge('waiting_acquires', 'Callers waiting for a connection now.', (stats) => stats.waiting),
  gauge('circuit_open', '1 while the circuit breaker fails acquires fast, else 0.', (stats) => Number(stats.circuitOpen)),
  counter('acquires', 'Connections checked out.', (stats) => stats.acquires),
  counter('acquire_timeouts', 'Acquires that gave up after the acquire timeout.', (stats) => stats.acquireTimeouts),
  counter('circuit_rejections', 'Acquires refused at once while the circuit breaker was open.', (stats) => stats.circuitRejections),
  counter('commits', 'Transactions committed.', (stats) => stats.commits),
  counter('rollbacks', 'Transactions rolled back.', (stats) => stats.rollbacks),
  counter('commit_failures', 'COMMITs that failed; their transactions were rolled back.', (stats) => stats.commitFailures),
  counter('aborts', 'Transactions rolled back because the client went away or the socket timed out.', (stats) => stats.aborts),
  counter('retries', 'Units of work run again after a serialization failure or deadlock (the retries option).', (stats) => stats.retries),
  counter('leaks', 'Connections held past the leak threshold, or still checked out at close.', (stats) => stats.leaks),
  counter('idle_errors', 'Errors reported by idle pooled connections.', (stats) => stats.idleErrors),
  counter('connections_created', 'Connections the pool opened.', (stats) => stats.connectionsCreated),
  counter('connections_removed', 'Connections the pool closed.', (stats) => stats.connectionsRemoved),
  counter('callback_errors', 'afterCommit and afterRollback callbacks that threw or rejected.', (stats) => stats.callbackErrors),
  counter('connections_destroyed', 'Connections destroyed instead of returned because their state was in doubt.', (stats) => stats.destroyed),
  histogram('acquire_wait_seconds', 'Time from asking for a connection to having it.', (stats) => stats.acquireWaitSeconds),
  histogram('connection_hold_seconds', 'Time a connection stayed checked out.', (stats) => stats.holdSeconds)
]

const onPrimary = (read: (stats: DbPoolStats) => Sample[]) => (stats: DbPoolStats): Sample[] => stats.role === 'primary' ? read(stats) : []
const onReplica = (read: (stats: DbReplicaStats) => number) => (stats: DbPoolStats): Sample[] => stats.role === 'replica' ? [{ value: read(stats as DbReplicaStats) }] : []

/** What registrations with replicas add: each replica is a pool of its own, and the router's counters. */
export const REPLICA_FAMILIES: readonly MetricFamily[] = [
  counter('replica_reads', 'Read only units of work served by a replica.', (stats) => stats.replicaReads),
  {
    name: PREFIX + 'replica_fallbacks_total',
    type: 'counter',
    help: 'Read only units of work the primary served although replicas are configured, by reason.',
    samples: onPrimary((stats) => Object.entries(stats.replicaFallbacks).map(([reason, value]) => ({ labels: { reason }, value })))
  },
  { ...histogram('replica_wait_seconds', 'Time reads waited for a replica to replay their position.', (stats) => stats.replicaWaitSeconds), samples: onPrimary((stats) => histogramSamples(stats.replicaWaitSeconds)) },
  { name: PREFIX + 'replica_up', type: 'gauge', help: '1 while the replica answers its checks, else 0.', samples: onReplica((stats) => Number(stats.up)) },
  { name: PREFIX + 'replica_serving', type: 'gauge', help: '1 while reads may go to the replica (up, and lagging no more than maxReplicaLagMillis), else 0.', samples: onReplica((stats) => Number(stats.leftOut === null)) },
  { name: PREFIX + 'replica_lag_seconds', type: 'gauge', help: 'Replay lag of the replica at its last check.', samples: onReplica((stats) => (stats.lagMillis ?? 0) / 1000) }
]

/** A registration's pools: itself, then each of its replicas (labelled with their role), if it has any. */
function expand ({ name, stats }: Pools[number]): Array<{ name: string, stats: DbPoolStats, role?: string }> {
  if (stats.replicas.length === 0) return [{ name, stats }]
  return [{ name, stats, role: 'primary' }, ...stats.replicas.map((replica) => ({ name: replica.name, stats: replica, role: 'replica' }))]
}

/**
 * The pools' figures in Prometheus' text exposition format (version 0.0.4): one HELP and TYPE
 * per metric, then a sample per pool, labelled `pool`, so one scrape can serve several pools.
 * Pools of a registration with replicas are also labelled `role` (`primary` or `replica`).
 */
export function prometheusText (registrations: Pools): string {
  const out: string[] = []
  const pools = registrations.flatMap(expand)
  const families = pools.some(({ role }) => role !== undefined) ? [...METRIC_FAMILIES, ...REPLICA_FAMILIES] : METRIC_FAMILIES
  for (const { name, type, help, samples } of families) {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
    for (const { name: pool, stats, role } of pools) {
      for (const { suffix = '', labels = {}, value } of samples(stats)) {
        const all = [`pool="${escapeLabel(pool)}"`, ...(role === undefined ? [] : [`role="${role}"`]), ...Object.entries(labels).map(([key, label]) => `${key}="${label}"`)]
        out.push(`${name}${suffix}{${all.join(',')}} ${value}`)
      }
    }
  }
  return out.join('\n') + '\n'
}

function histogramSamples (histogram: HistogramSnapshot): Sample[] {
  const samples: Sample[] = histogram.buckets.map(({ le, count }) => ({ suffix: '_bucket', labels: { le }, value: count }))
  samples.push(
    { suffix: '_bucket', labels: { le: '+Inf' }, value: histogram.count },
    { suffix: '_sum', value: histogram.sum },
    { suffix: '_count', value: histogram.count }
  )
  return samples
}

// The exposition format escapes backslash, double quote and line feed in label values.
function escapeLabel (value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
}
