import { Transaction } from 'kysely'
import type { AbortableOperationOptions, AbortableQueryOptions, CompiledQuery, ConnectionProvider, DatabaseConnection, DialectAdapter, KyselyPlugin, KyselyProps, QueryExecutor, QueryId, QueryResult, RootOperationNode } from 'kysely'
import { BeginFailure, canFollowBegin } from './begin-with-query.js'
import { refuseSessionState } from './sql.js'
import { ignore, logWarning } from './callbacks.js'
import type pg from 'pg'
import { classify } from './classify.js'
import type { ConnectionSource } from './connection-source.js'
import { kyselyResult } from './lease.js'
import type { Lease } from './lease.js'
import { ClosingError, CommitOutcomeUnknownError, HoldTimeoutError, TransactionAbortedError, TransactionFinishedError } from './errors.js'
import type { BeginSettings } from './transaction-settings.js'
import type { LeakOwner, LeakWatch } from './leak-watch.js'

const SETTLED = Promise.resolve()

/** What every unit of work of one plugin instance shares. */
export interface SessionRuntime {
  readonly source: ConnectionSource
  /** The plugin's Kysely executor: its compiler, adapter and plugins serve every session. */
  readonly executor: QueryExecutor
  readonly props: Omit<KyselyProps, 'executor'>
  /** Sessions holding or opening a connection, so that close() can end them. */
  readonly live: Set<DbSession>
  /** Watches how long sessions hold their connections; null when leak detection is off. */
  readonly leakWatch: LeakWatch | null
  /** Destroys leases: cancels their running statements, then closes their sockets; PostgreSQL rolls back what they held. */
  readonly destroy: (leases: Lease[], reason: Error) => Promise<void>
}

/**
 * One unit of work: a transaction opened by its first query, and one idempotent finish that
 * commits or rolls back, then returns the connection exactly once.
 *
 * It is its Kysely transaction's query executor: a query goes straight to the connection, and
 * the first one follows BEGIN in the same round trip. Compiling and plugins are the plugin's
 * shared executor's; only what Kysely's executor does per query (a connection-provider callback,
 * async layers) is left out.
 */
export class DbSession implements QueryExecutor {
  readonly #runtime: SessionRuntime
  readonly #settings: BeginSettings
  /** Builds the statement that follows BEGIN in its round trip (the context's set_config calls), or null. */
  readonly #context: (() => string) | null
  #transaction: Transaction<any> | null = null
  /** The connection, once BEGIN was sent on it and the transaction is open. */
  #lease: Lease | null = null
  /**
   * pg must not be handed a second query before the first ends: queries run one at a time.
   * While one runs, later ones wait here, in order; a plain flag and array rather than a chain
   * of promises, so that a query nobody waits behind costs no promise for the queue.
   */
  #running = false
  #waiting: Array<() => void> | null = null
  /** Resolves a finish waiting for the running and waiting queries to end. */
  #drained: (() => void) | null = null
  #finishing: Promise<Error | null> | null = null
  #finishReason = ''
  /** Why the work was ended for its owner (close()): reported, once, to whoever then asks to commit. */
  #interruption: Error | null = null
  /** Describes the owner for a leak report; only called when leak detection is on. */
  readonly #owner: (() => LeakOwner) | null
  /** Where the first query was issued, kept for a leak report. */
  #firstQuery: Error | null = null
  #stopWatching: () => void = ignore

  constructor (runtime: SessionRuntime, settings: BeginSettings, context: (() => string) | null = null, owner: (() => LeakOwner) | null = null) {
    this.#runtime = runtime
    this.#settings = settings
    this.#context = context
    this.#owner = owner
  }

  /** The Kysely transaction users query through; nothing is sent until its first query. */
  get transaction (): Transaction<any> {
    const { config, dialect, driver } = this.#runtime.props
    this.#transaction ??= new Transaction({ config, dialect, driver, executor: this })
    return this.#transaction
  }

  get finished (): boolean {
    return this.#finishing !== null
  }

  // QueryExecutor: what does not run a query is the shared executor's.
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

  /** Kysely's own executor on this session's connection: for what the short path does not cover. */
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
    const refused = this.#refusal()
    if (refused !== null) return refused
    return this.#running ? this.#later(() => this.#runQuery(compiledQuery)) : this.#runQuery(compiledQuery)
  }

  /** ConnectionProvider, for Kysely's executor: the consumer gets the open transaction's connection. */
  provideConnection<T> (consumer: (connection: DatabaseConnection) => Promise<T>): Promise<T> {
    const refused = this.#refusal()
    if (refused !== null) return refused
    return this.#running ? this.#later(() => this.#runConsumer(consumer)) : this.#runConsumer(consumer)
  }

  /** A query after the finish is refused; a first query is remembered for a leak report. */
  #refusal (): Promise<never> | null {
    if (this.#finishing !== null) return Promise.reject(new TransactionFinishedError(this.#finishReason))
    // Captured here, while the caller's frames are still on the stack.
    if (this.#lease === null && this.#runtime.leakWatch !== null) this.#firstQuery ??= new Error('the first query was issued here')
    return null
  }

  /** Runs `run` once the queries before it have ended. */
  #later<T> (run: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      (this.#waiting ??= []).push(() => { run().then(resolve, reject) })
    })
  }

  async #runQuery<R> (compiledQuery: CompiledQuery<R>): Promise<QueryResult<R>> {
    let result: QueryResult<R>
    this.#running = true
    try {
      result = this.#lease === null ? await this.#openWith(compiledQuery) : await this.#lease.executeQuery(compiledQuery)
    } finally {
      this.#next()
    }
    // As Kysely does, after the connection is free: a plugin may query the transaction itself.
    for (const plugin of this.#runtime.executor.plugins) {
      result = await plugin.transformResult(Object.freeze({ queryId: compiledQuery.queryId, result: result as QueryResult<any> })) as QueryResult<R>
    }
    return result
  }

  async #runConsumer<T> (consumer: (connection: DatabaseConnection) => Promise<T>): Promise<T> {
    this.#running = true
    try {
      return await consumer(this.#lease ?? await this.#open())
    } finally {
      this.#next()
    }
  }

  /** Starts the next waiting query, or notes that none runs. */
  #next (): void {
    const next = this.#waiting?.shift()
    if (next !== undefined) {
      next()
      return
    }
    this.#running = false
    if (this.#drained !== null) this.#drained()
  }

  /** BEGIN and the statements that go with it: the route's settings, then the request's context. */
  #prelude (): readonly string[] {
    // Built before a connection is taken: a context function that throws costs none.
    return this.#context === null ? this.#settings.statements : [...this.#settings.statements, this.#context()]
  }

  /** Opens the transaction with its first query: one round trip for BEGIN, settings and query. */
  async #openWith<R> (compiledQuery: CompiledQuery<R>): Promise<QueryResult<R>> {
    // Later queries are checked by the lease; this one before a connection is taken.
    refuseSessionState(compiledQuery.sql)
    if (!canFollowBegin(compiledQuery.sql, compiledQuery.parameters)) return (await this.#open()).executeQuery(compiledQuery)
    const prelude = this.#prelude()
    const lease = await this.#acquire()
    let result: pg.QueryResult
    try {
      result = await lease.runAfter(prelude, compiledQuery)
    } catch (error) {
      if (error instanceof BeginFailure) throw this.#notOpened(lease, error.cause as Error)
      this.#lease = lease
      throw lease.queryError(error as Error)
    }
    this.#lease = lease
    return kyselyResult(result)
  }

  /** Opens the transaction on its own round trip, for a query that cannot follow BEGIN. */
  async #open (): Promise<Lease> {
    const prelude = this.#prelude()
    const lease = await this.#acquire()
    try {
      await lease.command(prelude.join('; '))
    } catch (cause) {
      throw this.#notOpened(lease, cause as Error)
    }
    this.#lease = lease
    return lease
  }

  async #acquire (): Promise<Lease> {
    let lease: Lease
    try {
      lease = await this.#runtime.source.acquire()
    } catch (error) {
      // Made in a pool callback: its stack would say nothing of who asked.
      Error.captureStackTrace(error as Error)
      throw error
    }
    this.#runtime.live.add(this)
    const { leakWatch } = this.#runtime
    if (leakWatch !== null && this.#owner !== null) {
      this.#stopWatching = leakWatch.watch(this.#owner(), this.#firstQuery as Error, () => { this.#abandon(lease) })
    }
    return lease
  }

  /** BEGIN failed: the connection is in doubt, and the query that tried gets a 503. */
  #notOpened (lease: Lease, cause: Error): Error {
    this.#runtime.live.delete(this)
    this.#stopWatching()
    lease.release(true)
    return this.#runtime.source.beginError(cause)
  }

  /** Past the hold limit: the work is rolled back by destroying its connection, whatever it is doing. */
  #abandon (lease: Lease): void {
    const error = new HoldTimeoutError(this.#runtime.leakWatch?.timeoutMillis)
    this.interrupt(error)
    if (!lease.gone) this.#runtime.destroy([lease], error).catch(ignore)
  }

  /**
   * Commits or rolls back after the queries already issued, and gives the connection back.
   * Idempotent: later calls get the first call's outcome. Never rejects: resolves to the error
   * a failed COMMIT should be reported as, or null.
   */
  finish (commit: boolean, reason: string): Promise<Error | null> {
    if (this.#finishing === null) {
      this.#finishReason = reason
      // After the queries already issued, and never within this call: whoever finishes (the
      // hold limit) may destroy the connection first, and then no ROLLBACK is sent.
      const drained = this.#running ? new Promise<void>((resolve) => { this.#drained = resolve }) : SETTLED
      this.#finishing = drained.then(() => this.#end(commit))
    } else if (commit && this.#interruption !== null) {
      // Its owner still means to commit, but the work was rolled back for it: say so.
      return this.#finishing.then(() => this.takeInterruption())
    }
    return this.#finishing
  }

  /** Rolls back on the owner's behalf (the server is closing); a later commit gets `error`. */
  interrupt (error: Error): Promise<Error | null> {
    this.#interruption ??= error
    return this.finish(false, error.message)
  }

  /** The interruption not yet reported, once. */
  takeInterruption (): Error | null {
    const error = this.#interruption
    this.#interruption = null
    return error
  }

  /** Runs when no query runs or waits: the open, if one was tried, has settled. Not async: the commit's promise is the finish's. */
  #end (commit: boolean): Promise<Error | null> | Error | null {
    const lease = this.#lease
    // Never opened, or its open failed (the query that tried has already thrown).
    if (lease === null) return null
    this.#runtime.live.delete(this)
    this.#stopWatching()
    // close() or the hold limit destroyed the connection: PostgreSQL rolled back; a commit cannot be had.
    if (lease.gone) {
      this.#runtime.source.telemetry.transactionEnded('rolled back')
      return commit ? new ClosingError() : null
    }
    return commit ? this.#commit(lease) : this.#rollback(lease)
  }

  async #commit (lease: Lease): Promise<Error | null> {
    const brokenBeforeCommit = lease.failure !== null
    let error: Error | null = null
    try {
      // PostgreSQL answers COMMIT with a ROLLBACK tag when an earlier statement failed.
      const { command } = await lease.command('COMMIT')
      if (command !== 'COMMIT') error = new TransactionAbortedError()
    } catch (cause) {
      const classified = classify(cause as Error, 'commit', { ...lease.circumstances(), brokenBeforeCommit })
      if (classified.broken) lease.broke(cause as Error)
      error = classified.error
    }
    this.#runtime.source.telemetry.transactionEnded(error === null ? 'committed' : error instanceof CommitOutcomeUnknownError ? 'outcome unknown' : 'commit failed')
    lease.release()
    return error
  }

  async #rollback (lease: Lease): Promise<null> {
    const { telemetry, log } = this.#runtime.source
    telemetry.transactionEnded('rolled back')
    // A connection that already broke has nothing to roll back: PostgreSQL did it as it ended.
    if (lease.failure !== null) {
      lease.release(true)
      return null
    }
    const failed = await lease.command('ROLLBACK').then(
      () => false,
      (error) => {
        logWarning(log, 'fastify-db-session: ROLLBACK failed; destroying the connection')(error)
        return true
      })
    lease.release(failed)
    return null
  }
}
