import pg from 'pg'
import type { FastifyRequest } from 'fastify'
import type { FastifyDbSessionOptions } from '../index.js'
import { InvalidOptionError } from './errors.js'
import { checkPoolConfig, checkPoolMinimum, poolDeadlines } from './pool-config.js'
import type { PoolDeadlines } from './pool-config.js'

/** The response header a write's commit position goes out in, and the request header it comes back in. */
export const LSN_HEADER = 'db-session-lsn'

export const REPLICA_DEFAULTS = {
  replicaWaitMillis: 100,
  maxReplicaLagMillis: 5000,
  replicaCheckMillis: 1000
} as const

/** One replica's pool, and the deadlines its connection source keeps (as for the primary's). */
export interface ReplicaPool extends PoolDeadlines {
  pool: pg.Pool
  owned: boolean
}

export interface ReplicaSettings {
  pools: ReplicaPool[]
  /** How long a read that carries a position waits for a replica to replay it before the primary serves it. */
  waitMillis: number
  /** Replay lag past which a replica is left out until it catches up. */
  maxLagMillis: number
  /** How often each replica's health and replay position are read. */
  checkMillis: number
  /** The position a request must read at least, as text, or undefined for none. */
  positionOf: (request: FastifyRequest) => string | undefined
}

interface Sizing {
  max: number
  idleTimeoutMillis: number
  maxLifetimeSeconds: number
  acquireTimeoutMillis: number
  connectTimeoutMillis: number
  /** pg's Client with our connect timeout, as the primary's owned pool gets it. */
  withConnectTimeout: (Client: NonNullable<pg.PoolConfig['Client']>, millis: number) => typeof pg.Client
}

const KNOWN = ['replicas', 'replicaWaitMillis', 'maxReplicaLagMillis', 'replicaCheckMillis', 'lsnFrom'] as const
export const REPLICA_OPTION_NAMES: readonly string[] = KNOWN

function millis (value: unknown, name: string, min: number): number {
  if (!Number.isSafeInteger(value) || (value as number) < min || (value as number) > 2147483647) {
    throw new InvalidOptionError(`${name} must be an integer number of milliseconds from ${min} to 2147483647; instead got '${String(value)}'`)
  }
  return value as number
}

/** Reads the position a request sent back in the db-session-lsn header (Node joins a repeated one with commas: malformed). */
function fromHeader (request: FastifyRequest): string | undefined {
  return request.headers[LSN_HEADER] as string | undefined
}

/**
 * The replicas option and its companions, checked once; null without replicas (the others are
 * then refused, as they would do nothing). Pools made here get the primary's sizing options.
 */
export function resolveReplicas (options: FastifyDbSessionOptions, sizing: Sizing): ReplicaSettings | null {
  const { replicas } = options
  if (replicas === undefined || (Array.isArray(replicas) && replicas.length === 0)) {
    const given = KNOWN.slice(1).filter((name) => options[name] !== undefined)
    if (given.length > 0) throw new InvalidOptionError(`${given.join(', ')} only apply with the replicas option, which is not set`)
    return null
  }
  if (!Array.isArray(replicas)) {
    throw new InvalidOptionError(`replicas must be an array of connection strings, pg.PoolConfig objects or pg.Pool instances; instead got '${String(replicas)}'`)
  }
  const { lsnFrom = fromHeader } = options
  if (typeof lsnFrom !== 'function') {
    throw new InvalidOptionError(`lsnFrom must be a function (request) => string | undefined; instead got '${String(lsnFrom)}'`)
  }
  return {
    pools: replicas.map((replica, index) => replicaPool(replica, `replicas[${index}]`, sizing)),
    waitMillis: millis(options.replicaWaitMillis ?? REPLICA_DEFAULTS.replicaWaitMillis, 'replicaWaitMillis', 0),
    maxLagMillis: millis(options.maxReplicaLagMillis ?? REPLICA_DEFAULTS.maxReplicaLagMillis, 'maxReplicaLagMillis', 1),
    checkMillis: millis(options.replicaCheckMillis ?? REPLICA_DEFAULTS.replicaCheckMillis, 'replicaCheckMillis', 10),
    positionOf: lsnFrom
  }
}

function replicaPool (replica: unknown, where: string, sizing: Sizing): ReplicaPool {
  // Any pool with connect() is the user's, as for the pool option: theirs to size and to end.
  if (typeof (replica as { connect?: unknown } | null)?.connect === 'function') {
    const pool = replica as pg.Pool
    return { pool, owned: false, ...poolDeadlines(pool.options.connectionTimeoutMillis ?? 0, sizing, false) }
  }
  let config: pg.PoolConfig
  if (typeof replica === 'string' && replica !== '') config = { connectionString: replica }
  else if (replica !== null && typeof replica === 'object') config = { ...replica as pg.PoolConfig }
  else throw new InvalidOptionError(`${where} must be a connection string, a pg.PoolConfig or a pg.Pool; instead got '${String(replica)}'`)
  try {
    checkPoolConfig(config)
  } catch (error) {
    throw new InvalidOptionError(`${where}: ${(error as Error).message.replace('fastify-db-session: ', '')}`)
  }
  // The config's own sizing stands; what it leaves out is the primary's.
  config.max ??= sizing.max
  checkPoolMinimum(config.min, config.max)
  config.idleTimeoutMillis ??= sizing.idleTimeoutMillis
  config.maxLifetimeSeconds ??= sizing.maxLifetimeSeconds
  const deadlines = poolDeadlines(config.connectionTimeoutMillis ?? 0, sizing, true)
  config.Client = sizing.withConnectTimeout(config.Client ?? pg.Client, deadlines.connectTimeoutMillis)
  return { pool: new pg.Pool(config), owned: true, ...deadlines }
}
