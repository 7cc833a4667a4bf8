import type { DbRouteConfig, DbTransactionSettings } from '../index.js'
import { autocommitSettings, checkAutocommit } from './autocommit.js'
import { refuseUnknownKeys } from './closest-name.js'
import { InvalidOptionError } from './errors.js'

const ISOLATION_LEVELS = ['read uncommitted', 'read committed', 'repeatable read', 'serializable']
/** The keys of a route's `config.<decorator>`, and of fastify.<decorator>.transaction()'s options with theirs. */
export const ROUTE_KEYS = ['isolationLevel', 'accessMode', 'statementTimeoutMillis', 'idleInTransactionTimeoutMillis', 'retries', 'replica', 'autocommit', 'respondBeforeCommit']
/** Each retry holds its request (or caller) longer; past a few, the conflict is the design's to fix. */
export const MAX_RETRIES = 10
const ACCESS_MODES = ['read write', 'read only']

/** What a unit of work needs to start: BEGIN and the SET LOCAL statements after it, built once per settings. */
export interface BeginSettings {
  readonly statements: readonly string[]
  /** What BEGIN names, for a unit of work's span; undefined leaves it to the server's default. */
  readonly isolationLevel?: string | undefined
  readonly accessMode?: string | undefined
  /** The access mode resolves to read only and `replica` is not false: a replica may serve it (replica-router.ts). */
  readonly replica?: boolean
  /** BEGIN says READ ONLY: nothing to track for read-your-writes. */
  readonly readOnly?: boolean
  /**
   * `autocommit: true`: no BEGIN; these set_config calls (autocommit.ts) go before every query,
   * and `statements` is not sent. null for a transaction.
   */
  readonly autocommit: string | null
  /**
   * `respondBeforeCommit` on a read-only transaction below serializable: its COMMIT has nothing to lose and no conflict to
   * report, so the response need not wait for it (see UnitOfWork.answersBeforeCommit).
   */
  readonly quietCommit: boolean
}

/** Validates transaction settings and builds their BEGIN statement, once, at register/route time. */
export function beginSettings (settings: DbTransactionSettings & { replica?: unknown }, where: string): BeginSettings {
  const { isolationLevel, accessMode, statementTimeoutMillis, idleInTransactionTimeoutMillis, autocommit, replica, respondBeforeCommit } = settings
  if (respondBeforeCommit !== undefined && typeof respondBeforeCommit !== 'boolean') {
    throw new InvalidOptionError(`${where}respondBeforeCommit must be true (read only transactions answer before their COMMIT) or false; instead got '${String(respondBeforeCommit)}'`)
  }
  if (replica !== undefined && typeof replica !== 'boolean') {
    throw new InvalidOptionError(`${where}replica must be false (read only work stays on the primary) or true; instead got '${String(replica)}'`)
  }
  if (isolationLevel !== undefined && !ISOLATION_LEVELS.includes(isolationLevel)) {
    throw new InvalidOptionError(`${where}isolationLevel must be one of ${ISOLATION_LEVELS.join(', ')}; instead got '${isolationLevel}'`)
  }
  if (accessMode !== undefined && !ACCESS_MODES.includes(accessMode)) {
    throw new InvalidOptionError(`${where}accessMode must be one of ${ACCESS_MODES.join(', ')}; instead got '${accessMode}'`)
  }
  let begin = 'BEGIN'
  if (isolationLevel !== undefined) begin += ` ISOLATION LEVEL ${isolationLevel.toUpperCase()}`
  if (accessMode !== undefined) begin += ` ${accessMode.toUpperCase()}`
  const statements = [begin]
  // SET LOCAL ends with the transaction: nothing carries over to the connection's next user.
  if (statementTimeoutMillis !== undefined) {
    statements.push(`SET LOCAL statement_timeout = ${milliseconds(statementTimeoutMillis, where + 'statementTimeoutMillis')}`)
  }
  if (idleInTransactionTimeoutMillis !== undefined) {
    statements.push(`SET LOCAL idle_in_transaction_session_timeout = ${milliseconds(idleInTransactionTimeoutMillis, where + 'idleInTransactionTimeoutMillis')}`)
  }
  // No transaction stays open between statements: idleInTransactionTimeoutMillis has nothing to limit.
  const perQuery = checkAutocommit(autocommit, accessMode, isolationLevel, where) ? autocommitSettings(statementTimeoutMillis) : null
  const readOnly = accessMode === 'read only'
  return { statements, isolationLevel, accessMode, replica: readOnly && replica !== false, readOnly, autocommit: perQuery, quietCommit: respondBeforeCommit === true && readOnly && isolationLevel !== 'serializable' }
}

// PostgreSQL takes these as int4 milliseconds; 0 turns the limit off.
function milliseconds (value: unknown, name: string): number {
  if (!Number.isSafeInteger(value) || (value as number) < 0 || (value as number) > 2147483647) {
    throw new InvalidOptionError(`${name} must be an integer number of milliseconds from 0 (no limit) to 2147483647; instead got '${String(value)}'`)
  }
  return value as number
}

/** The `retries` option checked: how many more times a unit of work that met a conflict runs. */
export function retryCount (value: unknown, name: string): number {
  if (!Number.isSafeInteger(value) || (value as number) < 0 || (value as number) > MAX_RETRIES) {
    throw new InvalidOptionError(`${name} must be an integer from 0 to ${MAX_RETRIES}; instead got '${String(value)}'`)
  }
  return value as number
}

/** Settings over defaults, where an explicit `undefined` keeps the default. */
export function withDefaults (defaults: DbTransactionSettings, settings: DbTransactionSettings): DbTransactionSettings {
  return {
    isolationLevel: settings.isolationLevel ?? defaults.isolationLevel,
    accessMode: settings.accessMode ?? defaults.accessMode,
    statementTimeoutMillis: settings.statementTimeoutMillis ?? defaults.statementTimeoutMillis,
    idleInTransactionTimeoutMillis: settings.idleInTransactionTimeoutMillis ?? defaults.idleInTransactionTimeoutMillis,
    autocommit: settings.autocommit ?? defaults.autocommit,
    respondBeforeCommit: settings.respondBeforeCommit ?? defaults.respondBeforeCommit
  }
}

/**
 * Resolves a route's `config.<key>` (`config.db` for the default decorator) against the plugin
 * defaults: `null` when the route opted out. Results are cached per route config object, so each
 * route pays for this once.
 */
export function routeSettingsResolver (defaults: DbTransactionSettings, key: string) {
  const pluginSettings = beginSettings(defaults, '')
  const cache = new WeakMap<object, BeginSettings | null>()

  function resolve (config: object | undefined, where: string): BeginSettings | null {
    const routeConfig = (config as Record<string, DbRouteConfig | undefined> | undefined)?.[key]
    if (routeConfig === undefined) return pluginSettings
    if (routeConfig === false) return null
    if (routeConfig === null || typeof routeConfig !== 'object') {
      throw new InvalidOptionError(`${where}${key} must be false or an object like { isolationLevel, accessMode, statementTimeoutMillis }; instead got '${String(routeConfig)}'`)
    }
    refuseUnknownKeys(routeConfig, ROUTE_KEYS, where + key)
    if (routeConfig.retries !== undefined) retryCount(routeConfig.retries, `${where}${key}.retries`)
    return beginSettings({ ...withDefaults(defaults, routeConfig), replica: routeConfig.replica }, `${where}${key}.`)
  }

  return {
    /** Checks a route's config when the route is declared, so mistakes fail at startup. */
    check (config: object | undefined, url: string) {
      resolve(config, `route ${url}: config.`)
    },
    forConfig (config: { url?: string }): BeginSettings | null {
      let settings = cache.get(config)
      if (settings === undefined) {
        settings = resolve(config, `route ${config.url}: config.`)
        cache.set(config, settings)
      }
      return settings
    }
  }
}
