import type { FastifyBaseLogger } from 'fastify'
import type { DbContextValue, DbTransactionOptions, DbTransactionSettings } from '../index.js'
import { applicationNameText } from './application-name.js'
import { checkSettingNames } from './context-settings.js'
import { InvalidOptionError } from './errors.js'
import { WorkExecutor } from './kysely-executor.js'
import type { KyselyRuntime } from './kysely-executor.js'
import { contextStatement } from './sql.js'
import { beginSettings, withDefaults } from './transaction-settings.js'
import { UnitOfWork } from './unit-of-work.js'
import type { WorkRuntime } from './unit-of-work.js'

/**
 * fastify.db.transaction(fn, options): a unit of work outside any request, with the same
 * guarantees; committed when `fn` resolves, rolled back when it throws.
 */
export function standaloneTransaction (runtime: WorkRuntime & KyselyRuntime, defaults: DbTransactionSettings, log: FastifyBaseLogger, namesTransactions: boolean) {
  return async function transaction<T> (fn: (trx: any) => Promise<T>, options?: DbTransactionOptions): Promise<T> {
    if (typeof fn !== 'function') throw new InvalidOptionError(`fastify.db.transaction expects a function (trx) => Promise; instead got '${String(fn)}'`)
    const { context, label, ...settings } = options ?? {}
    const begin = beginSettings(withDefaults(defaults, settings), 'fastify.db.transaction: ')
    const values: Record<string, DbContextValue> = { ...context }
    checkSettingNames(Object.keys(values), 'fastify.db.transaction context: ')
    const name = transactionLabel(label, namesTransactions)
    if (name !== null) values.application_name = name
    // Nothing to set (an empty context, no label) sends nothing, as for the plugin's context option.
    const statement = Object.keys(values).length === 0 ? null : () => contextStatement(values)
    const owner = runtime.leakWatch === null ? null : () => ({ log, route: 'fastify.db.transaction' })
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

/** The application_name of a fastify.db.transaction: its label, the default one, or none. */
function transactionLabel (label: unknown, namesTransactions: boolean): string | null {
  if (label === false) return null
  if (label === undefined) return namesTransactions ? 'fastify.db.transaction' : null
  if (typeof label !== 'string') {
    throw new InvalidOptionError(`fastify.db.transaction: label must be a string, or false to leave application_name alone; instead got '${String(label)}'`)
  }
  return applicationNameText(label)
}
