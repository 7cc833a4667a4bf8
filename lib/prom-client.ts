import type { DbPoolStats, PromClientRegistry } from '../index.js'
import { InvalidOptionError } from './errors.js'
import { METRIC_FAMILIES } from './prometheus.js'
import type { MetricFamily } from './prometheus.js'

interface Pool { name: string, stats: () => DbPoolStats }

// One collector per registry, shared by every registration that reports to it: a metric is
// registered once, with a sample per pool, as metrics() does for combineMetrics().
const collectors = new WeakMap<PromClientRegistry, Map<string, Pool>>()

/**
 * Reports one registration's figures through a prom-client Registry; returns what takes them out
 * again (at close). prom-client is never imported: a Registry takes any object with prom-client's
 * metric shape (name, help, type, get()), and a histogram's buckets can only be handed over that way.
 */
export function reportToPromClient (registry: PromClientRegistry, pool: Pool): () => void {
  let pools = collectors.get(registry)
  if (pools === undefined) {
    const taken = METRIC_FAMILIES.filter((family) => registry.getSingleMetric(family.name) !== undefined).map((family) => family.name)
    if (taken.length > 0) {
      throw new InvalidOptionError(`promClientRegistry already holds ${taken.join(', ')}, not registered by this plugin; give a registry without them`)
    }
    const current = new Map<string, Pool>()
    for (const family of METRIC_FAMILIES) registry.registerMetric(promMetric(family, current))
    collectors.set(registry, current)
    pools = current
  }
  if (pools.has(pool.name)) {
    throw new InvalidOptionError(`promClientRegistry already reports a pool named '${pool.name}'; give each registration that shares a registry its own name option`)
  }
  pools.set(pool.name, pool)
  const reporting = pools
  return () => {
    reporting.delete(pool.name)
    if (reporting.size > 0) return
    for (const family of METRIC_FAMILIES) registry.removeSingleMetric(family.name)
    collectors.delete(registry)
  }
}

/** A metric as prom-client's Registry reads it: read when scraped, never reset (they are lifetime counters). */
function promMetric (family: MetricFamily, pools: ReadonlyMap<string, Pool>): object {
  const { help, type } = family
  const metric = {
    // prom-client renames counters (without _total) when it writes OpenMetrics, so get() reads the name here.
    name: family.name,
    help,
    type,
    aggregator: 'sum',
    get: async () => {
      const values = []
      for (const { name: pool, stats } of pools.values()) {
        for (const { suffix, labels, value } of family.samples(stats())) {
          values.push({ metricName: suffix === undefined ? undefined : metric.name + suffix, labels: { pool, ...labels }, value })
        }
      }
      return { name: metric.name, help, type, aggregator: 'sum', values }
    },
    reset: () => {}
  }
  return metric
}
