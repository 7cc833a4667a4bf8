import fp from 'fastify-plugin'
import pg from 'pg'
import { DummyDriver, Kysely, PostgresDialect } from 'kysely'
import type { PostgresPool } from 'kysely'
import type { FastifyInstance } from 'fastify'
import type { DbTransactionOptions, DbTransactionSettings, FastifyDbSession, FastifyDbSessionOptions } from '../index.js'
import { ignore, logWarning } from './callbacks.js'
import { ConnectionSource } from './connection-lease.js'
import { checkSettingNames, contextStatement } from './context-settings.js'
import { DbSession } from './db-session.js'
import type { SessionRuntime } from './db-session.js'
import { ClosingError, errors, InvalidOptionError } from './errors.js'
import { resolveOptions } from './options.js'
import { PoolCounters, poolStats } from './pool-stats.js'
import { installRequestHooks } from './request-hooks.js'
import { beginSettings, routeSettingsResolver, withDefaults } from './transaction-settings.js'

async function dbSession (fastify: FastifyInstance, options: FastifyDbSessionOptions): Promise<void> {
  const resolved = resolveOptions(options)
  const { pool, closeTimeoutMillis } = resolved
  const counters = new PoolCounters()
  const source = new ConnectionSource(pool, counters, fastify.log, resolved.acquireTimeoutMillis, resolved.reportedAcquireTimeoutMillis)

  // fastify.db.kysely runs on Kysely's own driver, fed by our leases: same deadline, listening and release rules.
  const leasingPool = { connect: () => source.acquire(), end: async () => {}, options: pool.options }
  const dialect = new PostgresDialect({ pool: leasingPool as unknown as PostgresPool })
  const kysely = new Kysely<any>({ dialect, plugins: resolved.plugins })
  const runtime: SessionRuntime = {
    source,
    executor: kysely.getExecutor(),
    props: { config: { dialect }, dialect, driver: new DummyDriver() },
    live: new Set()
  }

  const defaults: DbTransactionSettings = { isolationLevel: resolved.isolationLevel, accessMode: resolved.accessMode }
  const routeSettings = routeSettingsResolver(defaults)
  installRequestHooks(fastify, runtime, routeSettings, resolved.commitWhen, resolved.contextFor)

  async function transaction<T> (fn: (trx: any) => Promise<T>, options?: DbTransactionOptions): Promise<T> {
    if (typeof fn !== 'function') throw new InvalidOptionError(`fastify.db.transaction expects a function (trx) => Promise; instead got '${String(fn)}'`)
    const { context, ...settings } = options ?? {}
    const begin = beginSettings(withDefaults(defaults, settings), 'fastify.db.transaction: ')
    let statement: (() => string) | null = null
    if (context !== undefined) {
      checkSettingNames(Object.keys(context), 'fastify.db.transaction context: ')
      statement = () => contextStatement(context)
    }
    const session = new DbSession(runtime, begin, statement)
    let result: T
    try {
      result = await fn(session.transaction)
    } catch (error) {
      await session.finish(false, 'its callback threw')
      throw error
    }
    const commitFailure = await session.finish(true, 'its callback returned')
    if (commitFailure !== null) throw commitFailure
    return result
  }

  const db: FastifyDbSession<any> = {
    kysely,
    pool,
    transaction,
    stats: () => poolStats(pool, counters)
  }
  fastify.decorate('db', db)

  // A checked-out client is listened to by its lease; an idle one that fails must not crash the process.
  const onIdleError = (error: Error): void => {
    fastify.log.warn({ err: error }, 'fastify-db-session: an idle database connection failed; the pool dropped it')
  }
  pool.on('error', onIdleError)

  /**
   * Ends every connection still checked out. Closing a socket does not stop a statement running
   * in PostgreSQL, so their backends are terminated too: that rolls back what they held.
   */
  async function destroyCheckedOut (): Promise<void> {
    const pids: number[] = []
    for (const lease of source.leases) {
      counters.leaks++
      pids.push(lease.processID)
      lease.release(true)
    }
    if (pids.length === 0) return
    const control = new pg.Client({ ...pool.options, connectionTimeoutMillis: closeTimeoutMillis })
    control.on('error', ignore)
    await control.connect()
      .then(() => control.query('SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid', [pids]))
      .catch(logWarning(fastify.log, 'fastify-db-session: could not terminate the backends of stuck connections'))
    await control.end().catch(ignore)
  }

  let closeTimer: NodeJS.Timeout | undefined
  fastify.addHook('preClose', (done) => {
    // Requests still running get closeTimeoutMillis to finish; a request stuck in the database
    // would otherwise keep the server from closing.
    closeTimer = setTimeout(destroyCheckedOut, closeTimeoutMillis).unref()
    done()
  })
  fastify.addHook('onClose', async () => {
    clearTimeout(closeTimer)
    source.close()
    const rollbacks = [...runtime.live].map((session) => session.interrupt(new ClosingError()))
    await within(closeTimeoutMillis, Promise.all(rollbacks))
    await within(closeTimeoutMillis, destroyCheckedOut())
    if (resolved.ownsPool) {
      // The listener stays: pg-pool's end() resolves while its sockets may still report errors.
      await within(closeTimeoutMillis, pool.end())
    } else {
      pool.removeListener('error', onIdleError)
    }
  })
}

/** Waits for `work`, but never longer than `millis`. */
async function within (millis: number, work: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<void>((resolve) => { timer = setTimeout(resolve, millis) })
  await Promise.race([work, deadline])
  clearTimeout(timer)
}

const fastifyDbSession = Object.assign(fp(dbSession, { fastify: '5.x', name: 'fastify-db-session' }), { errors })

export default fastifyDbSession
export { fastifyDbSession, errors, fastifyDbSession as 'module.exports' }
