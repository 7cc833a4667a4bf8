import pg from 'pg'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { KyselyPlugin, PostgresCursorConstructor } from 'kysely'
import type { DbTransactionSettings, FastifyDbSessionOptions, OpenTelemetryMeterProvider, OpenTelemetryTracerProvider, PromClientRegistry } from '../index.js'
import { decoratorName } from './decorator-name.js'
import { InvalidOptionError } from './errors.js'
import { applicationNameResolver } from './application-name.js'
import { noteConnecting } from './connect-time.js'
import { requestContextResolver } from './context-settings.js'
import { beginSettings, retryCount } from './transaction-settings.js'
import { checkPoolConfig, checkPoolMinimum, LONGEST_MILLIS, poolDeadlines } from './pool-config.js'
import type { PoolDeadlines } from './pool-config.js'
import { preparedStatementsOption } from './prepared-statements.js'
import type { PreparedStatements } from './prepared-statements.js'
import type { CircuitBreakerSettings } from './circuit-breaker.js'
import type { StartupCheckSettings } from './health.js'
import type { LeakSettings } from './leak-watch.js'
import type { TracerChoice } from './otel-tracing.js'
import type { RetrySettings } from './retry.js'
import { REPLICA_OPTION_NAMES, resolveReplicas } from './replica-options.js'
import type { ReplicaSettings } from './replica-options.js'

export const DEFAULTS = {
  maxConnections: 10,
  acquireTimeoutMillis: 5000,
  idleTimeoutMillis: 10000,
  maxLifetimeSeconds: 1800,
  closeTimeoutMillis: 5000,
  leakDetectionMillis: 0,
  leakTimeoutMillis: 0,
  retryDelayMillis: 20
} as const
/**
 * connectTimeoutMillis, when not given: the acquire deadline, but never below this. A connection
 * is made for the pool, not for the one caller who asked first: bounded by that caller's short
 * deadline, every connect fails once the event loop lags behind it, and the pool never fills.
 */
const MIN_DEFAULT_CONNECT_TIMEOUT_MILLIS = 5000
/** The longest retryDelayMillis: its doubled backoffs must stay far below a Node timer's limit. */
const MAX_RETRY_DELAY_MILLIS = 60000

export const STARTUP_CHECK_DEFAULTS: StartupCheckSettings = { retries: 4, delayMillis: 250 }
export const CIRCUIT_BREAKER_DEFAULTS: CircuitBreakerSettings = { failureThreshold: 5, coolDownMillis: 5000 }

export interface ResolvedOptions extends PoolDeadlines {
  pool: pg.Pool
  ownsPool: boolean
  closeTimeoutMillis: number
  commitWhen: (request: FastifyRequest, reply: FastifyReply) => boolean
  plugins: KyselyPlugin[]
  /** pg-cursor's class, for stream(); null without the option. */
  cursor: PostgresCursorConstructor | null
  /** Transaction settings every unit of work starts from. */
  transactionDefaults: DbTransactionSettings
  /** The name of `request.<decorator>`, `fastify.<decorator>` and the routes' `config.<decorator>`. */
  decorator: string
  /** The `pool` label of the metrics. */
  name: string
  metricsRoute: string | null
  leak: LeakSettings | null
  circuitBreaker: CircuitBreakerSettings | null
  startupCheck: StartupCheckSettings | null
  /** The retries option (the default of routes and fastify.db.transaction) and the backoff's base delay. */
  retry: RetrySettings
  /** Builds a request's set_config statement (its context and application_name); null when there is none. */
  contextFor: ((request: FastifyRequest) => string) | null
  /** The prom-client Registry that reports the metrics too, or null. */
  promClientRegistry: PromClientRegistry | null
  /** The OpenTelemetry meter provider the metrics go through, or null (no OpenTelemetry). */
  meterProvider: OpenTelemetryMeterProvider | null
  /** Where the units of work's spans go: the given tracer provider, the API's global one, or nowhere (openTelemetry: false). */
  tracerProvider: TracerChoice
  /** Units of work name themselves in application_name (the applicationName option is not false). */
  namesTransactions: boolean
  /** The read replicas and their settings (replica-options.ts), or null without the replicas option. */
  replicas: ReplicaSettings | null
  /** Which queries go as named statements; null without the preparedStatements option. */
  preparedStatements: PreparedStatements | null
}

const KNOWN = new Set([
  'connectionString', 'pool', 'maxConnections', 'acquireTimeoutMillis', 'connectTimeoutMillis', 'idleTimeoutMillis',
  'maxLifetimeSeconds', 'closeTimeoutMillis', 'commitWhen', 'plugins', 'cursor', 'isolationLevel', 'accessMode', 'context',
  'statementTimeoutMillis', 'idleInTransactionTimeoutMillis', 'name', 'metricsRoute', 'leakDetectionMillis',
  'leakTimeoutMillis', 'circuitBreaker', 'startupCheck', 'retries', 'retryDelayMillis', 'autocommit', 'respondBeforeCommit', 'decorator', 'applicationName', 'promClientRegistry', 'openTelemetry', 'preparedStatements',
  ...REPLICA_OPTION_NAMES
])
const POOL_SIZING = ['maxConnections', 'idleTimeoutMillis', 'maxLifetimeSeconds'] as const

function commitBelow400 (_request: FastifyRequest, reply: FastifyReply): boolean {
  return reply.statusCode < 400
}

function wholeNumber (options: FastifyDbSessionOptions, name: keyof typeof DEFAULTS, min: number): number {
  return integerAtLeast(options[name] ?? DEFAULTS[name], name, min)
}

function integerAtLeast (value: unknown, name: string, min: number): number {
  if (!Number.isSafeInteger(value) || (value as number) < min) {
    throw new InvalidOptionError(`${name} must be an integer of at least ${min}; instead got '${String(value)}'`)
  }
  // A duration becomes a Node timer, and a longer timer than this fires at once.
  const longest = name.endsWith('Millis') ? LONGEST_MILLIS : name.endsWith('Seconds') ? Math.floor(LONGEST_MILLIS / 1000) : Infinity
  if ((value as number) > longest) {
    throw new InvalidOptionError(`${name} must be at most ${longest} (the longest a Node timer waits); instead got '${String(value)}'`)
  }
  return value as number
}

/** `false`, `true` (the defaults) or an object overriding some of them, checked field by field. */
function toggled<T extends object> (value: unknown, name: string, defaults: T, minimums: { [K in keyof T]: number }): T | null {
  if (value === false) return null
  if (value === true) return { ...defaults }
  if (value === null || typeof value !== 'object') {
    throw new InvalidOptionError(`${name} must be true, false or an object like ${JSON.stringify(defaults)}; instead got '${String(value)}'`)
  }
  const result = { ...defaults }
  for (const [key, given] of Object.entries(value)) {
    if (!(key in defaults)) throw new InvalidOptionError(`unknown option '${name}.${key}'; known are ${Object.keys(defaults).join(', ')}`)
    if (given !== undefined) (result as Record<string, number>)[key] = integerAtLeast(given, `${name}.${key}`, minimums[key as keyof T])
  }
  return result
}

function metricsRouteOption (value: unknown): string | null {
  if (value === undefined || value === false) return null
  if (typeof value !== 'string' || !value.startsWith('/')) {
    throw new InvalidOptionError(`metricsRoute must be a path starting with '/', like '/metrics'; instead got '${String(value)}'`)
  }
  return value
}

// A second registration's pool label defaults to its decorator, so two registrations' metrics never clash by default.
function nameOption (value: unknown, decorator: string): string {
  if (value === undefined) return decorator === 'db' ? 'default' : decorator
  if (typeof value !== 'string' || value === '') {
    throw new InvalidOptionError(`name must be a non-empty string (the metrics' pool label); instead got '${String(value)}'`)
  }
  return value
}

function promClientRegistryOption (value: unknown): PromClientRegistry | null {
  if (value === undefined) return null
  const methods = ['registerMetric', 'getSingleMetric', 'removeSingleMetric'] as const
  if (value === null || typeof value !== 'object' || methods.some((name) => typeof (value as Record<string, unknown>)[name] !== 'function')) {
    throw new InvalidOptionError(`promClientRegistry must be a prom-client Registry (such as prom-client's register); instead got '${String(value)}'`)
  }
  return value as PromClientRegistry
}

/** openTelemetry: false (nothing), or { meterProvider?, tracerProvider? } with at least one; spans go to the global provider by default. */
function openTelemetryOption (value: unknown): { meterProvider: OpenTelemetryMeterProvider | null, tracerProvider: TracerChoice } {
  if (value === undefined) return { meterProvider: null, tracerProvider: 'global' }
  if (value === false) return { meterProvider: null, tracerProvider: null }
  const expected = 'openTelemetry must be false or { meterProvider, tracerProvider } (either may be left out, not both), with an OpenTelemetry MeterProvider and TracerProvider (such as metrics.getMeterProvider() and trace.getTracerProvider() of @opentelemetry/api)'
  const { meterProvider, tracerProvider } = (value ?? {}) as { meterProvider?: { getMeter?: unknown }, tracerProvider?: { getTracer?: unknown } }
  if (typeof value !== 'object' || value === null || (meterProvider === undefined && tracerProvider === undefined)) {
    throw new InvalidOptionError(`${expected}; instead got '${String(value)}'`)
  }
  const unknown = Object.keys(value).filter((key) => key !== 'meterProvider' && key !== 'tracerProvider')
  if (unknown.length > 0) throw new InvalidOptionError(`unknown option 'openTelemetry.${unknown[0]}'; known are meterProvider, tracerProvider`)
  if (meterProvider !== undefined && typeof meterProvider?.getMeter !== 'function') {
    throw new InvalidOptionError(`${expected}; instead got meterProvider '${String(meterProvider)}'`)
  }
  if (tracerProvider !== undefined && typeof tracerProvider?.getTracer !== 'function') {
    throw new InvalidOptionError(`${expected}; instead got tracerProvider '${String(tracerProvider)}'`)
  }
  return {
    meterProvider: (meterProvider ?? null) as OpenTelemetryMeterProvider | null,
    tracerProvider: (tracerProvider ?? 'global') as OpenTelemetryTracerProvider | 'global'
  }
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
  const { cursor = null } = options
  if (cursor !== null && typeof cursor !== 'function') {
    throw new InvalidOptionError(`cursor must be pg-cursor's class (import Cursor from 'pg-cursor'); instead got '${String(cursor)}'`)
  }
  const { isolationLevel, accessMode, statementTimeoutMillis, idleInTransactionTimeoutMillis, autocommit, respondBeforeCommit } = options
  const transactionDefaults = { isolationLevel, accessMode, statementTimeoutMillis, idleInTransactionTimeoutMillis, autocommit, respondBeforeCommit }
  beginSettings(transactionDefaults, '')
  const closeTimeoutMillis = wholeNumber(options, 'closeTimeoutMillis', 1)
  const acquireTimeoutMillis = wholeNumber(options, 'acquireTimeoutMillis', 1)
  const connectTimeoutMillis = options.connectTimeoutMillis === undefined
    ? Math.max(acquireTimeoutMillis, MIN_DEFAULT_CONNECT_TIMEOUT_MILLIS)
    : integerAtLeast(options.connectTimeoutMillis, 'connectTimeoutMillis', 1)
  const ours = { acquireTimeoutMillis, connectTimeoutMillis }
  const retryDelayMillis = options.retryDelayMillis ?? DEFAULTS.retryDelayMillis
  if (!Number.isSafeInteger(retryDelayMillis) || retryDelayMillis < 0 || retryDelayMillis > MAX_RETRY_DELAY_MILLIS) {
    throw new InvalidOptionError(`retryDelayMillis must be an integer number of milliseconds from 0 to ${MAX_RETRY_DELAY_MILLIS}; instead got '${String(retryDelayMillis)}'`)
  }
  const decorator = decoratorName(options.decorator)
  const leak = { warnMillis: wholeNumber(options, 'leakDetectionMillis', 0), timeoutMillis: wholeNumber(options, 'leakTimeoutMillis', 0) }
  const applicationName = applicationNameResolver(options.applicationName)
  const common = {
    closeTimeoutMillis,
    commitWhen,
    plugins,
    cursor,
    transactionDefaults,
    contextFor: requestContextResolver(options.context, applicationName),
    namesTransactions: applicationName !== null,
    retry: { retries: retryCount(options.retries ?? 0, 'retries'), delayMillis: retryDelayMillis },
    decorator,
    name: nameOption(options.name, decorator),
    metricsRoute: metricsRouteOption(options.metricsRoute),
    leak: leak.warnMillis > 0 || leak.timeoutMillis > 0 ? leak : null,
    circuitBreaker: toggled(options.circuitBreaker ?? false, 'circuitBreaker', CIRCUIT_BREAKER_DEFAULTS, { failureThreshold: 1, coolDownMillis: 1 }),
    startupCheck: toggled(options.startupCheck ?? true, 'startupCheck', STARTUP_CHECK_DEFAULTS, { retries: 0, delayMillis: 0 }),
    promClientRegistry: promClientRegistryOption(options.promClientRegistry),
    preparedStatements: preparedStatementsOption(options.preparedStatements),
    ...openTelemetryOption(options.openTelemetry)
  }
  // Replica pools the plugin makes are sized as the primary's would be (without the config's own numbers).
  const replicas = (): ReplicaSettings | null => resolveReplicas(options, {
    max: wholeNumber(options, 'maxConnections', 1),
    idleTimeoutMillis: wholeNumber(options, 'idleTimeoutMillis', 0),
    maxLifetimeSeconds: wholeNumber(options, 'maxLifetimeSeconds', 0),
    acquireTimeoutMillis,
    connectTimeoutMillis,
    withConnectTimeout
  })

  // Any pool with connect() is the user's: pg-pool's own class, or another copy of pg's.
  if (typeof (pool as { connect?: unknown } | undefined)?.connect === 'function') {
    const userPool = pool as pg.Pool
    // The user's pool is theirs to size; only the acquire deadline is ours to add.
    const given: string[] = POOL_SIZING.filter((name) => options[name] !== undefined)
    if (options.connectTimeoutMillis !== undefined) given.push('connectTimeoutMillis')
    if (connectionString !== undefined) given.unshift('connectionString')
    if (given.length > 0) {
      throw new InvalidOptionError(`${given.join(', ')} cannot apply to an existing pg.Pool; set them on the pool, or pass a pg.PoolConfig as pool`)
    }
    const poolDeadline = userPool.options.connectionTimeoutMillis ?? 0
    if (poolDeadline > 0 && options.acquireTimeoutMillis !== undefined) {
      throw new InvalidOptionError(`acquireTimeoutMillis conflicts with the pool's connectionTimeoutMillis (${poolDeadline}); set only one`)
    }
    return {
      ...common,
      replicas: replicas(),
      pool: userPool,
      ownsPool: false,
      ...poolDeadlines(poolDeadline, ours, false)
    }
  }

  const config: pg.PoolConfig = { ...pool as pg.PoolConfig }
  checkPoolConfig(config)
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
  if (config.connectionTimeoutMillis && options.connectTimeoutMillis !== undefined) {
    throw new InvalidOptionError('connectTimeoutMillis and pool.connectionTimeoutMillis are both set (pg-pool\'s connectionTimeoutMillis bounds the wait and the connect alike); set only one')
  }
  config.max ??= wholeNumber(options, 'maxConnections', 1)
  checkPoolMinimum(config.min, config.max)
  config.idleTimeoutMillis ??= wholeNumber(options, 'idleTimeoutMillis', 0)
  config.maxLifetimeSeconds ??= wholeNumber(options, 'maxLifetimeSeconds', 0)
  // pg waits forever by default; a request must fail fast instead. A connectionTimeoutMillis of
  // the config's own is pg-pool's to keep; otherwise the deadline is ours, kept with one timer for
  // all waiters, and new connections get connectTimeoutMillis as pg's connect timeout.
  const deadlines = poolDeadlines(config.connectionTimeoutMillis ?? 0, ours, true)
  config.Client = withConnectTimeout(config.Client ?? pg.Client, deadlines.connectTimeoutMillis)
  const replicaSettings = replicas()
  return {
    ...common,
    replicas: replicaSettings,
    pool: new pg.Pool(config),
    ownsPool: true,
    ...deadlines
  }
}

/**
 * pg's Client class (or the config's own) with a connect timeout (unless `millis` is 0: the
 * pool's own), and the time each connect began (connect-time.ts). pg-pool hands every client its
 * own options, where a connectionTimeoutMillis would also put a timer on every checkout.
 */
function withConnectTimeout (Client: NonNullable<pg.PoolConfig['Client']>, millis: number): typeof pg.Client {
  const Base = Client as typeof pg.Client
  return class ClientWithConnectTimeout extends Base {
    constructor (config: pg.ClientConfig) {
      // pg-pool keeps the password out of the options' enumerable properties. A timeout given
      // for this one client (the startup check's) stands.
      super({ ...config, password: config.password, connectionTimeoutMillis: config.connectionTimeoutMillis || millis })
      noteConnecting(this)
    }
  }
}

function pgName (name: typeof POOL_SIZING[number]): 'max' | 'idleTimeoutMillis' | 'maxLifetimeSeconds' {
  return name === 'maxConnections' ? 'max' : name
}
