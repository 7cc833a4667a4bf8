import type pg from 'pg'
import { InvalidOptionError } from './errors.js'

// Node's timers and PostgreSQL's int4 settings both stop at 2^31 - 1 (a longer Node timer fires at once).
export const LONGEST_MILLIS = 2147483647

interface NumberRule {
  min: number
  max: number
  /** What else the field takes, besides a whole number in range: pg's `false` (off), pg-pool's Infinity. */
  also?: readonly unknown[]
  /** What the value means at its bounds, for the message. */
  note?: string
}

const millis = (min: number, note: string): NumberRule => ({ min, max: LONGEST_MILLIS, note })
const serverTimeout: NumberRule = { min: 0, max: LONGEST_MILLIS, also: [false], note: '0 or false: no limit' }

/** The sizing and timeout fields of pg's PoolConfig and ClientConfig that pg and pg-pool document. */
const RULES: Record<string, NumberRule> = {
  max: { min: 1, max: Number.MAX_SAFE_INTEGER },
  min: { min: 0, max: Number.MAX_SAFE_INTEGER },
  maxUses: { min: 1, max: Number.MAX_SAFE_INTEGER, also: [Infinity], note: 'Infinity: no limit' },
  idleTimeoutMillis: { ...millis(0, '0: idle connections stay open'), also: [null] },
  connectionTimeoutMillis: millis(0, '0: no limit'),
  maxLifetimeSeconds: { min: 0, max: Math.floor(LONGEST_MILLIS / 1000), note: '0: no limit' },
  keepAliveInitialDelayMillis: millis(0, '0: the system default'),
  port: { min: 1, max: 65535 },
  statement_timeout: serverTimeout,
  query_timeout: serverTimeout,
  lock_timeout: serverTimeout,
  idle_in_transaction_session_timeout: serverTimeout
}

/**
 * Checks a pg.PoolConfig's sizing and timeout fields at register time, before any connection:
 * pg takes nonsense (a zero max, a negative timeout, a port as a string) and fails later, or never.
 */
export function checkPoolConfig (config: pg.PoolConfig): void {
  for (const [field, rule] of Object.entries(RULES)) {
    const value = (config as Record<string, unknown>)[field]
    if (value === undefined || rule.also?.includes(value)) continue
    if (!Number.isSafeInteger(value) || (value as number) < rule.min || (value as number) > rule.max) {
      const also = rule.also === undefined ? '' : ` or ${rule.also.map(String).join(' or ')}`
      const note = rule.note === undefined ? '' : ` (${rule.note})`
      throw new InvalidOptionError(`pool.${field} must be an integer from ${rule.min} to ${rule.max}${also}${note}; instead got ${described(value)}`)
    }
  }
}

/** pool.min against the pool's max, once maxConnections (or its default) has filled it in. */
export function checkPoolMinimum (min: number | undefined, max: number): void {
  if (min !== undefined && min > max) {
    throw new InvalidOptionError(`pool.min must be at most the pool's max (${max}); instead got ${min}`)
  }
}

function described (value: unknown): string {
  if (typeof value === 'number' || value === null) return String(value)
  if (typeof value === 'string') return `the string '${value}'`
  return `${String(value)} (${typeof value})`
}

/** The deadlines a pool's connection source keeps (ConnectionSource's `own`, `reported` and `connect`). */
export interface PoolDeadlines {
  /** Our own acquire deadline; 0 when pg-pool keeps one (the pool's connectionTimeoutMillis). */
  acquireTimeoutMillis: number
  /** The deadline reported in errors. */
  reportedAcquireTimeoutMillis: number
  /** pg's connect timeout on the pool's new connections; 0 when the pool is the user's or pg-pool keeps its own. */
  connectTimeoutMillis: number
}

/**
 * A pool's deadlines: pg-pool's own connectionTimeoutMillis (`poolDeadline`, 0 for none) bounds
 * the wait and the connect alike when the pool has one; otherwise the wait is ours, and the
 * connect too when the plugin made the pool.
 */
export function poolDeadlines (poolDeadline: number, ours: { acquireTimeoutMillis: number, connectTimeoutMillis: number }, owned: boolean): PoolDeadlines {
  if (poolDeadline > 0) return { acquireTimeoutMillis: 0, reportedAcquireTimeoutMillis: poolDeadline, connectTimeoutMillis: 0 }
  return { acquireTimeoutMillis: ours.acquireTimeoutMillis, reportedAcquireTimeoutMillis: ours.acquireTimeoutMillis, connectTimeoutMillis: owned ? ours.connectTimeoutMillis : 0 }
}
