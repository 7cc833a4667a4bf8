import pg from 'pg'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { KyselyPlugin } from 'kysely'
import type { FastifyDbSessionOptions } from '../index.js'
import { InvalidOptionError } from './errors.js'
import { requestContextResolver } from './context-settings.js'
import { beginSettings } from './transaction-settings.js'

export const DEFAULTS = {
  maxConnections: 10,
  acquireTimeoutMillis: 5000,
  idleTimeoutMillis: 10000,
  maxLifetimeSeconds: 1800,
  closeTimeoutMillis: 5000
} as const

export interface ResolvedOptions {
  pool: pg.Pool
  ownsPool: boolean
  /** Our own acquire deadline, for a user's pool that has none; 0 when pg enforces it. */
  acquireTimeoutMillis: number
  /** The deadline reported in errors. */
  reportedAcquireTimeoutMillis: number
  closeTimeoutMillis: number
  commitWhen: (request: FastifyRequest, reply: FastifyReply) => boolean
  plugins: KyselyPlugin[]
  isolationLevel: FastifyDbSessionOptions['isolationLevel']
  accessMode: FastifyDbSessionOptions['accessMode']
  /** Builds a request's set_config statement; null without a context option. */
  contextFor: ((request: FastifyRequest) => string) | null
}

const KNOWN = new Set([
  'connectionString', 'pool', 'maxConnections', 'acquireTimeoutMillis', 'idleTimeoutMillis',
  'maxLifetimeSeconds', 'closeTimeoutMillis', 'commitWhen', 'plugins', 'isolationLevel', 'accessMode', 'context'
])
const POOL_SIZING = ['maxConnections', 'idleTimeoutMillis', 'maxLifetimeSeconds'] as const

function commitBelow400 (_request: FastifyRequest, reply: FastifyReply): boolean {
  return reply.statusCode < 400
}

function wholeNumber (options: FastifyDbSessionOptions, name: keyof typeof DEFAULTS, min: number): number {
  const value = options[name] ?? DEFAULTS[name]
  if (!Number.isSafeInteger(value) || value < min) {
    throw new InvalidOptionError(`${name} must be an integer of at least ${min}; instead got '${String(value)}'`)
  }
  return value
}

/** Checks every option once, at register time, and fills in the defaults. */
// Fastify always hands a plugin an object (it turns a missing one into {}).
export function resolveOptions (options: FastifyDbSessionOptions): ResolvedOptions {
  for (const key of Object.keys(options)) {
    if (!KNOWN.has(key)) throw new InvalidOptionError(`unknown option '${key}'; known options are ${[...KNOWN].join(', ')}`)
  }
  const { connectionString, pool, commitWhen = commitBelow400, plugins = [] } = options
  if (connectionString !== undefined && (typeof connectionString !== 'string' || connectionString === '')) {
    throw new InvalidOptionError(`connectionString must be a non-empty string; instead got '${String(connectionString)}'`)
  }
  if (connectionString === undefined && pool === undefined) {
    throw new InvalidOptionError('give either connectionString or pool (a pg.Pool or a pg.PoolConfig)')
  }
  if (pool !== undefined && (pool === null || typeof pool !== 'object')) {
    throw new InvalidOptionError(`pool must be a pg.Pool or a pg.PoolConfig object; instead got '${String(pool)}'`)
  }
  if (typeof commitWhen !== 'function') {
    throw new InvalidOptionError(`commitWhen must be a function (request, reply) => boolean; instead got '${String(commitWhen)}'`)
  }
  if (commitWhen.constructor.name === 'AsyncFunction') {
    throw new InvalidOptionError('commitWhen must be synchronous: it decides while the response is being sent, and a Promise would always count as true')
  }
  if (!Array.isArray(plugins)) {
    throw new InvalidOptionError(`plugins must be an array of Kysely plugins; instead got '${String(plugins)}'`)
  }
  beginSettings(options, '')
  const closeTimeoutMillis = wholeNumber(options, 'closeTimeoutMillis', 1)
  const acquireTimeoutMillis = wholeNumber(options, 'acquireTimeoutMillis', 1)
  const contextFor = requestContextResolver(options.context)
  const common = { closeTimeoutMillis, commitWhen, plugins, isolationLevel: options.isolationLevel, accessMode: options.accessMode, contextFor }

  // Any pool with connect() is the user's: pg-pool's own class, or another copy of pg's.
  if (typeof (pool as { connect?: unknown } | undefined)?.connect === 'function') {
    const userPool = pool as pg.Pool
    // The user's pool is theirs to size; only the acquire deadline is ours to add.
    const given = POOL_SIZING.filter((name) => options[name] !== undefined)
    if (connectionString !== undefined) given.unshift('connectionString' as never)
    if (given.length > 0) {
      throw new InvalidOptionError(`${given.join(', ')} cannot apply to an existing pg.Pool; set them on the pool, or pass a pg.PoolConfig as pool`)
    }
    const poolDeadline = userPool.options.connectionTimeoutMillis ?? 0
    if (poolDeadline > 0 && options.acquireTimeoutMillis !== undefined) {
      throw new InvalidOptionError(`acquireTimeoutMillis conflicts with the pool's connectionTimeoutMillis (${poolDeadline}); set only one`)
    }
    return {
      ...common,
      pool: userPool,
      ownsPool: false,
      acquireTimeoutMillis: poolDeadline > 0 ? 0 : acquireTimeoutMillis,
      reportedAcquireTimeoutMillis: poolDeadline > 0 ? poolDeadline : acquireTimeoutMillis
    }
  }

  const config: pg.PoolConfig = { ...pool as pg.PoolConfig }
  for (const name of POOL_SIZING) {
    if (options[name] !== undefined && config[pgName(name)] !== undefined) {
      throw new InvalidOptionError(`${name} and pool.${pgName(name)} are both set; set only one`)
    }
  }
  if (connectionString !== undefined) {
    if (config.connectionString !== undefined) throw new InvalidOptionError('connectionString and pool.connectionString are both set; set only one')
    config.connectionString = connectionString
  }
  if (config.connectionTimeoutMillis && options.acquireTimeoutMillis !== undefined) {
    throw new InvalidOptionError('acquireTimeoutMillis and pool.connectionTimeoutMillis are both set; set only one')
  }
  config.max ??= wholeNumber(options, 'maxConnections', 1)
  config.idleTimeoutMillis ??= wholeNumber(options, 'idleTimeoutMillis', 0)
  config.maxLifetimeSeconds ??= wholeNumber(options, 'maxLifetimeSeconds', 0)
  // pg waits forever by default; a request must fail fast instead.
  config.connectionTimeoutMillis ||= acquireTimeoutMillis
  return {
    ...common,
    pool: new pg.Pool(config),
    ownsPool: true,
    acquireTimeoutMillis: 0,
    reportedAcquireTimeoutMillis: config.connectionTimeoutMillis
  }
}

function pgName (name: typeof POOL_SIZING[number]): 'max' | 'idleTimeoutMillis' | 'maxLifetimeSeconds' {
  return name === 'maxConnections' ? 'max' : name
}
