import type { FastifyBaseLogger } from 'fastify'
import type { DbTransactionOptions, DbTransactionSettings } from '../index.js'
import { refuseUnknownKeys } from './closest-name.js'
import { checkSettingNames } from './context-settings.js'
import { InvalidOptionError } from './errors.js'
import { WorkExecutor } from './kysely-executor.js'
import type { KyselyRuntime } from './kysely-executor.js'
import { contextStatement } from './sql.js'
import { beginSettings, ROUTE_KEYS, withDefaults } from './transaction-settings.js'
import { UnitOfWork } from './unit-of-work.js'
import type { WorkRuntime } from './unit-of-work.js'

/** The keys of transaction()'s options: a route's settings and a context of its own (one list: a new option is one line). */
const OPTION_KEYS = [...ROUTE_KEYS, 'context']

/**
 * fastify.db.transaction(fn, options) (`db` being the decorator option): a unit of work outside any request, with the same
 * guarantees; committed when `fn` resolves, rolled back when it throws.
 */
export function standaloneTransaction (runtime: WorkRuntime & KyselyRuntime, defaults: DbTransactionSettings, log: FastifyBaseLogger, decorator: string) {
  const where = `fastify.${decorator}.transaction`
  return async function transaction<T> (fn: (trx: any) => Promise<T>, options?: DbTransactionOptions): Promise<T> {
    if (typeof fn !== 'function') throw new InvalidOptionError(`${where} expects a function (trx) => Promise; instead got '${String(fn)}'`)
    if (options !== undefined && (options === null || typeof options !== 'object')) {
      throw new InvalidOptionError(`${where}: options must be an object like { isolationLevel, accessMode, context }; instead got '${String(options)}'`)
    }
    refuseUnknownKeys(options ?? {}, OPTION_KEYS, `${where}: options`)
    const { context, ...settings } = options ?? {}
    const begin = beginSettings(withDefaults(defaults, settings), `${where}: `)
    let statement: (() => string) | null = null
    // An empty context sets nothing, as for the plugin's context option.
    if (context !== undefined && Object.keys(context).length > 0) {
      checkSettingNames(Object.keys(context), `${where} context: `)
      statement = () => contextStatement(context)
    }
    const owner = runtime.leakWatch === null ? null : () => ({ log, route: where })
    const work = new UnitOfWork(runtime, begin, statement, owner)
    let result: T
    try {
      result = await fn(new WorkExecutor(runtime, work).transaction)
    } catch (error) {
      await work.finish(false, 'its callback threw')
      throw error
    }
    const { error } = await work.finish(true, 'its callback returned')
    if (error !== null) throw error
    return result
  }
}
