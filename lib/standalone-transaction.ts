import type { FastifyBaseLogger } from 'fastify'
import type { DbContextValue, DbTransactionOptions, DbTransactionSettings, DbUnitOfWork } from '../index.js'
import { applicationNameText } from './application-name.js'
import { refuseUnknownKeys } from './closest-name.js'
import { checkCallback } from './commit-hooks.js'
import type { HookOwner } from './commit-hooks.js'
import { checkSettingNames } from './context-settings.js'
import { InvalidOptionError } from './errors.js'
import { WorkExecutor } from './kysely-executor.js'
import type { KyselyRuntime } from './kysely-executor.js'
import type { Retrier } from './retry.js'
import { isLsn } from './lsn.js'
import { placementFor } from './replica-router.js'
import { contextStatement } from './sql.js'
import { beginSettings, retryCount, ROUTE_KEYS, withDefaults } from './transaction-settings.js'
import { UnitOfWork } from './unit-of-work.js'
import type { WorkRuntime } from './unit-of-work.js'

/** The keys of transaction()'s options: a route's settings and a context of its own (one list: a new option is one line). */
const OPTION_KEYS = [...ROUTE_KEYS, 'context', 'label', 'lsn']

/**
 * fastify.db.transaction(fn, options) (`db` being the decorator option): a unit of work outside
 * any request, with the same guarantees; committed when `fn` resolves, rolled back when it
 * throws. It resolves (or rejects) once the unit's afterCommit (or afterRollback) callbacks ran.
 */
export function standaloneTransaction (runtime: WorkRuntime & KyselyRuntime, defaults: DbTransactionSettings, log: FastifyBaseLogger, retrier: Retrier, decorator: string, namesTransactions: boolean) {
  const where = `fastify.${decorator}.transaction`
  return async function transaction<T> (fn: (trx: any, unit: DbUnitOfWork<any>) => Promise<T>, options?: DbTransactionOptions): Promise<T> {
    if (typeof fn !== 'function') throw new InvalidOptionError(`${where} expects a function (trx, unit) => Promise; instead got '${String(fn)}'`)
    if (options !== undefined && (options === null || typeof options !== 'object')) {
      throw new InvalidOptionError(`${where}: options must be an object like { isolationLevel, accessMode, context }; instead got '${String(options)}'`)
    }
    refuseUnknownKeys(options ?? {}, OPTION_KEYS, `${where}: options`)
    const { context, label, retries, replica, lsn, ...settings } = options ?? {}
    if (lsn !== undefined && !isLsn(lsn)) {
      throw new InvalidOptionError(`${where}: lsn must be a WAL position as the db-session-lsn header carries it (like '0/16B3748'); instead got '${String(lsn)}'`)
    }
    const attempts = retries === undefined ? retrier.settings.retries : retryCount(retries, `${where}: retries`)
    const begin = beginSettings({ ...withDefaults(defaults, settings), replica }, `${where}: `)
    const values: Record<string, DbContextValue> = { ...context }
    checkSettingNames(Object.keys(values), `${where} context: `)
    const name = transactionLabel(label, namesTransactions, where)
    if (name !== null) values.application_name = name
    // Nothing to set (an empty context, no label) sends nothing, as for the plugin's context option.
    const statement = Object.keys(values).length === 0 ? null : () => contextStatement(values)
    const owner = () => ({ log, route: where })
    const spanLabel = { route: typeof label === 'string' ? label : where }
    // Each attempt on a unit of work of its own; a serialization failure or deadlock may run `fn` again.
    return retrier.repeat(attempts, log, async () => {
      // One span per attempt: each is a transaction of its own, with its own outcome.
      const span = runtime.tracing?.start(spanLabel, begin) ?? null
      const work = new UnitOfWork(runtime, begin, statement, runtime.leakWatch === null ? null : owner, span, placementFor(runtime.router, begin, null, lsn))
      const executor = new WorkExecutor(runtime, work)
      let value: T
      try {
        value = await fn(executor.transaction, unitOf(executor, owner))
      } catch (error) {
        return { value: undefined as T, outcome: await work.finish(false, 'its callback threw', error), failure: error }
      }
      const outcome = await work.finish(true, 'its callback returned')
      return { value, outcome, failure: outcome.error }
    })
  }
}

/** The `unit` handed to fn: its callbacks (logged with fastify.log) and savepoints. */
function unitOf (executor: WorkExecutor, owner: () => HookOwner): DbUnitOfWork<any> {
  return {
    afterCommit (fn) {
      checkCallback(fn, 'afterCommit')
      executor.work.hooks(owner).add(true, fn)
    },
    afterRollback (fn) {
      checkCallback(fn, 'afterRollback')
      executor.work.hooks(owner).add(false, fn)
    },
    savepoint (fn) {
      checkCallback(fn, 'savepoint')
      return executor.savepoint(fn)
    }
  }
}

/** The application_name of a fastify.db.transaction: its label, the default one, or none. */
function transactionLabel (label: unknown, namesTransactions: boolean, where: string): string | null {
  if (label === false) return null
  if (label === undefined) return namesTransactions ? where : null
  if (typeof label !== 'string') {
    throw new InvalidOptionError(`${where}: label must be a string, or false to leave application_name alone; instead got '${String(label)}'`)
  }
  return applicationNameText(label)
}
