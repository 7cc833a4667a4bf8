import type { FastifyBaseLogger } from 'fastify'
import type { DbTransactionOptions, DbTransactionSettings, DbUnitOfWork } from '../index.js'
import { checkCallback } from './commit-hooks.js'
import type { HookOwner } from './commit-hooks.js'
import { checkSettingNames } from './context-settings.js'
import { InvalidOptionError } from './errors.js'
import { WorkExecutor } from './kysely-executor.js'
import type { KyselyRuntime } from './kysely-executor.js'
import type { Retrier } from './retry.js'
import { contextStatement } from './sql.js'
import { beginSettings, retryCount, withDefaults } from './transaction-settings.js'
import { UnitOfWork } from './unit-of-work.js'
import type { WorkRuntime } from './unit-of-work.js'

/**
 * fastify.db.transaction(fn, options): a unit of work outside any request, with the same
 * guarantees; committed when `fn` resolves, rolled back when it throws. It resolves (or rejects)
 * once the unit's afterCommit (or afterRollback) callbacks ran.
 */
export function standaloneTransaction (runtime: WorkRuntime & KyselyRuntime, defaults: DbTransactionSettings, log: FastifyBaseLogger, retrier: Retrier) {
  return async function transaction<T> (fn: (trx: any, unit: DbUnitOfWork<any>) => Promise<T>, options?: DbTransactionOptions): Promise<T> {
    if (typeof fn !== 'function') throw new InvalidOptionError(`fastify.db.transaction expects a function (trx) => Promise; instead got '${String(fn)}'`)
    const { context, retries, ...settings } = options ?? {}
    const attempts = retries === undefined ? retrier.settings.retries : retryCount(retries, 'fastify.db.transaction: retries')
    const begin = beginSettings(withDefaults(defaults, settings), 'fastify.db.transaction: ')
    let statement: (() => string) | null = null
    // An empty context sets nothing, as for the plugin's context option.
    if (context !== undefined && Object.keys(context).length > 0) {
      checkSettingNames(Object.keys(context), 'fastify.db.transaction context: ')
      statement = () => contextStatement(context)
    }
    const owner = () => ({ log, route: 'fastify.db.transaction' })
    // Each attempt on a unit of work of its own; a serialization failure or deadlock may run `fn` again.
    return retrier.repeat(attempts, log, async () => {
      const work = new UnitOfWork(runtime, begin, statement, runtime.leakWatch === null ? null : owner)
      const executor = new WorkExecutor(runtime, work)
      let value: T
      try {
        value = await fn(executor.transaction, unitOf(executor, owner))
      } catch (error) {
        return { value: undefined as T, outcome: await work.finish(false, 'its callback threw'), failure: error }
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
