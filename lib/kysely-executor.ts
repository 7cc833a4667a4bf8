import { CompiledQuery, Transaction } from 'kysely'
import type { AbortableOperationOptions, AbortableQueryOptions, ConnectionProvider, DatabaseConnection, DialectAdapter, KyselyPlugin, KyselyProps, PostgresCursorConstructor, QueryExecutor, QueryId, QueryResult, RootOperationNode } from 'kysely'
import type { ConnectionSource } from './connection-source.js'
import { AutocommitUnsupportedError } from './errors.js'
import { savepointStatements } from './sql.js'
import type { UnitOfWork } from './unit-of-work.js'
import { WorkConnection } from './work-connection.js'

/** What every unit of work's Kysely face shares: the registration's Kysely executor and props. */
export interface KyselyRuntime {
  /** The registration's Kysely executor: its compiler, adapter and plugins serve every unit of work. */
  readonly executor: QueryExecutor
  readonly props: Omit<KyselyProps, 'executor'>
  /** For the connection Kysely's executor is lent: cancel and destroy (abort strategies). */
  readonly source: ConnectionSource
  /** pg-cursor's class (the `cursor` option), for stream(); null without it. */
  readonly cursor: PostgresCursorConstructor | null
}

/**
 * Kysely's QueryExecutor (and ConnectionProvider) over one unit of work: the Transaction users
 * query through. A query goes straight to the unit of work; compiling and plugins are the shared
 * executor's; only what Kysely's executor does per query (a connection-provider callback, async
 * layers) is left out.
 */
export class WorkExecutor implements QueryExecutor, ConnectionProvider {
  readonly work: UnitOfWork
  readonly #runtime: KyselyRuntime
  #transaction: Transaction<any> | null = null
  /** Savepoints opened so far, for their names. */
  #savepoints = 0

  constructor (runtime: KyselyRuntime, work: UnitOfWork) {
    this.#runtime = runtime
    this.work = work
  }

  /** The Kysely transaction users query through; nothing is sent until its first query. */
  get transaction (): Transaction<any> {
    const { config, dialect, driver } = this.#runtime.props
    this.#transaction ??= new Transaction({ config, dialect, driver, executor: this })
    return this.#transaction
  }

  // What does not run a query is the shared executor's.
  get adapter (): DialectAdapter {
    return this.#runtime.executor.adapter
  }

  get plugins (): readonly KyselyPlugin[] {
    return this.#runtime.executor.plugins
  }

  transformQuery<T extends RootOperationNode> (node: T, queryId: QueryId): T {
    return this.#runtime.executor.transformQuery(node, queryId)
  }

  compileQuery<R = unknown> (node: RootOperationNode, queryId: QueryId): CompiledQuery<R> {
    return this.#runtime.executor.compileQuery(node, queryId)
  }

  /** Kysely's own executor on this unit of work's connection: for what the short path does not cover. */
  #kyselyExecutor (): QueryExecutor {
    return this.#runtime.executor.withConnectionProvider(this)
  }

  withConnectionProvider (connectionProvider: ConnectionProvider): QueryExecutor {
    return this.#runtime.executor.withConnectionProvider(connectionProvider)
  }

  withPlugin (plugin: KyselyPlugin): QueryExecutor {
    return this.#kyselyExecutor().withPlugin(plugin)
  }

  withPlugins (plugins: readonly KyselyPlugin[]): QueryExecutor {
    return this.#kyselyExecutor().withPlugins(plugins)
  }

  withPluginAtFront (plugin: KyselyPlugin): QueryExecutor {
    return this.#kyselyExecutor().withPluginAtFront(plugin)
  }

  withoutPlugins (): QueryExecutor {
    return this.#kyselyExecutor().withoutPlugins()
  }

  stream<R> (compiledQuery: CompiledQuery<R>, chunkSize: number, options?: AbortableOperationOptions): AsyncIterableIterator<QueryResult<R>> {
    return this.#kyselyExecutor().stream(compiledQuery, chunkSize, options)
  }

  executeQuery<R> (compiledQuery: CompiledQuery<R>, options?: AbortableQueryOptions): Promise<QueryResult<R>> {
    // Cancellation by AbortSignal is Kysely's own machinery: it gets Kysely's path.
    if (options?.signal !== undefined) return this.#kyselyExecutor().executeQuery(compiledQuery, options)
    const result = this.work.query(compiledQuery)
    // Without plugins (the usual case) the unit of work's promise is the query's: nothing more per query.
    return this.#runtime.executor.plugins.length === 0 ? result : this.#transformed(result, compiledQuery.queryId)
  }

  /** As Kysely does, after the connection is free: a plugin may query the transaction itself. */
  async #transformed<R> (pending: Promise<QueryResult<R>>, queryId: QueryId): Promise<QueryResult<R>> {
    let result = await pending
    for (const plugin of this.#runtime.executor.plugins) {
      result = await plugin.transformResult(Object.freeze({ queryId, result: result as QueryResult<any> })) as QueryResult<R>
    }
    return result
  }

  /**
   * Runs `fn(trx)` inside a SAVEPOINT, queued like any query (a first one travels with BEGIN):
   * released when `fn` resolves; rolled back to, and the error rethrown, when it throws, which
   * also drops the afterCommit callbacks registered inside and runs its afterRollback ones.
   * Savepoints nest (call it again inside `fn`); they are not meant to run side by side.
   */
  async savepoint<T> (fn: (trx: Transaction<any>) => Promise<T> | T): Promise<T> {
    // PostgreSQL takes SAVEPOINT only inside a transaction block.
    if (this.work.autocommit) throw new AutocommitUnsupportedError('savepoint()')
    const { open, release, rollback } = savepointStatements(++this.#savepoints)
    await this.work.query(CompiledQuery.raw(open))
    const mark = this.work.hooksMark
    let result: T
    try {
      result = await fn(this.transaction)
    } catch (error) {
      // Only a savepoint really rolled back drops its callbacks; if ROLLBACK TO could not run (the
      // work was finished, the connection broke), the whole unit of work decides their fate.
      const rolledBack = await this.work.query(CompiledQuery.raw(rollback)).then(() => true, () => false)
      if (rolledBack) await this.work.rolledBackTo(mark)
      throw error
    }
    await this.work.query(CompiledQuery.raw(release))
    return result
  }

  /** ConnectionProvider, for Kysely's executor: the consumer gets the open transaction's connection. */
  provideConnection<T> (consumer: (connection: DatabaseConnection) => Promise<T>): Promise<T> {
    const { source, cursor } = this.#runtime
    return this.work.provide((lease) => consumer(new WorkConnection(lease, this.work, source, cursor)))
  }
}
