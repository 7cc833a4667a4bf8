import { Transaction } from 'kysely'
import type { ConnectionProvider, DatabaseConnection, KyselyProps, QueryExecutor } from 'kysely'
import { ignore, logWarning } from './callbacks.js'
import type { ConnectionSource, Lease } from './connection-lease.js'
import { ClosingError, commitError, CommitOutcomeUnknownError, ConnectionFailedError, HoldTimeoutError, TransactionAbortedError, TransactionFinishedError } from './errors.js'
import type { BeginSettings } from './transaction-settings.js'
import type { LeakOwner, LeakWatch } from './leak-watch.js'

const SETTLED = Promise.resolve()

/** What every unit of work of one plugin instance shares. */
export interface SessionRuntime {
  readonly source: ConnectionSource
  /** The plugin's Kysely executor (compiler, adapter, plugins); each session swaps in itself as connection provider. */
  readonly executor: QueryExecutor
  readonly props: Omit<KyselyProps, 'executor'>
  /** Sessions holding or opening a connection, so that close() can end them. */
  readonly live: Set<DbSession>
  /** Watches how long sessions hold their connections; null when leak detection is off. */
  readonly leakWatch: LeakWatch | null
  /** Destroys leases and terminates their backends, so that PostgreSQL rolls back what they held. */
  readonly destroy: (leases: Lease[]) => Promise<void>
}

/**
 * One unit of work: a transaction opened by its first query, and one idempotent finish that
 * commits or rolls back, then returns the connection exactly once.
 */
export class DbSession implements ConnectionProvider {
  readonly #runtime: SessionRuntime
  readonly #settings: BeginSettings
  /** Builds what follows BEGIN in its round trip (the context's set_config calls), or null. */
  readonly #context: (() => string) | null
  #transaction: Transaction<any> | null = null
  #opening: Promise<Lease> | null = null
  /** The connection, once BEGIN succeeded. */
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
  /** Called once when the finish starts (a request uses it to stop listening to its response). */
  onFinish: () => void = ignore

  constructor (runtime: SessionRuntime, settings: BeginSettings, context: (() => string) | null = null, owner: (() => LeakOwner) | null = null) {
    this.#runtime = runtime
    this.#settings = settings
    this.#context = context
    this.#owner = owner
  }

  /** The Kysely transaction users query through; nothing is sent until its first query. */
  get transaction (): Transaction<any> {
    this.#transaction ??= new Transaction({
      ...this.#runtime.props,
      executor: this.#runtime.executor.withConnectionProvider(this)
    })
    return this.#transaction
  }

  get finished (): boolean {
    return this.#finishing !== null
  }

  provideConnection<T> (consumer: (connection: DatabaseConnection) => Promise<T>): Promise<T> {
    if (this.#finishing !== null) return Promise.reject(new TransactionFinishedError(this.#finishReason))
    // Captured here, while the caller's frames are still on the stack.
    if (this.#opening === null && this.#runtime.leakWatch !== null) this.#firstQuery = new Error('the first query was issued here')
    if (!this.#running) return this.#run(consumer)
    return new Promise<T>((resolve, reject) => {
      (this.#waiting ??= []).push(() => { this.#run(consumer).then(resolve, reject) })
    })
  }

  async #run<T> (consumer: (connection: DatabaseConnection) => Promise<T>): Promise<T> {
    this.#running = true
    try {
      return await consumer(this.#lease ?? await (this.#opening ??= this.#open()))
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

  async #open (): Promise<Lease> {
    // Built before a connection is taken: a context function that throws costs none.
    const begin = this.#context === null ? this.#settings.beginSql : this.#settings.beginSql + this.#context()
    const lease = await this.#runtime.source.acquire()
    this.#runtime.live.add(this)
    try {
      await lease.client.query(begin)
    } catch (cause) {
      this.#runtime.live.delete(this)
      lease.release(true)
      throw new ConnectionFailedError((cause as Error).message, { cause })
    }
    const { leakWatch } = this.#runtime
    if (leakWatch !== null && this.#owner !== null) {
      this.#stopWatching = leakWatch.watch(this.#owner(), this.#firstQuery as Error, () => { this.#abandon(lease) })
    }
    this.#lease = lease
    return lease
  }

  /** Past the hold limit: the work is rolled back by destroying its connection, whatever it is doing. */
  #abandon (lease: Lease): void {
    this.interrupt(new HoldTimeoutError(this.#runtime.leakWatch?.timeoutMillis))
    if (!lease.released) this.#runtime.destroy([lease]).catch(ignore)
  }

  /**
   * Commits or rolls back after the queries already issued, and gives the connection back.
   * Idempotent: later calls get the first call's outcome. Never rejects: resolves to the error
   * a failed COMMIT should be reported as, or null.
   */
  finish (commit: boolean, reason: string): Promise<Error | null> {
    if (this.#finishing === null) {
      this.#finishReason = reason
      this.onFinish()
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

  /** Runs when no query runs or waits: the open, if one was tried, has settled. */
  async #end (commit: boolean): Promise<Error | null> {
    const lease = this.#lease
    // Never opened, or its open failed (the query that tried has already thrown).
    if (lease === null) return null
    this.#runtime.live.delete(this)
    this.#stopWatching()
    // close() or the hold limit destroyed the connection: PostgreSQL rolled back; a commit cannot be had.
    if (lease.released) {
      this.#runtime.source.counters.rollbacks++
      return commit ? new ClosingError() : null
    }
    return commit ? this.#commit(lease) : this.#rollback(lease)
  }

  async #commit (lease: Lease): Promise<Error | null> {
    const { counters } = this.#runtime.source
    const brokenBefore = lease.failure !== null
    let error: Error | null = null
    let rolledBack = true
    try {
      // PostgreSQL answers COMMIT with a ROLLBACK tag when an earlier statement failed.
      const { command } = await lease.client.query('COMMIT')
      if (command !== 'COMMIT') error = new TransactionAbortedError()
    } catch (cause) {
      if (!lease.noteFailure(cause as Error)) {
        error = commitError(cause as Error)
      } else if (brokenBefore || (cause as { code?: string }).code !== undefined) {
        // Broken before COMMIT was sent, or the server answered COMMIT with an error (a FATAL):
        // PostgreSQL rolled back. Report why the connection broke, not pg's "not queryable".
        error = commitError(lease.failure as Error)
      } else {
        // The connection was lost with COMMIT on its way or its answer on the way back: it may
        // have committed, and nobody can say.
        rolledBack = false
        error = new CommitOutcomeUnknownError((cause as Error).message, { cause })
      }
    }
    if (error === null) {
      counters.commits++
    } else {
      counters.commitFailures++
      if (rolledBack) counters.rollbacks++
    }
    lease.release()
    return error
  }

  async #rollback (lease: Lease): Promise<null> {
    const { counters, log } = this.#runtime.source
    counters.rollbacks++
    // A connection that already broke has nothing to roll back: PostgreSQL did it as it ended.
    if (lease.failure !== null) {
      lease.release(true)
      return null
    }
    const failed = await lease.client.query('ROLLBACK').then(
      () => false,
      (error) => {
        logWarning(log, 'fastify-db-session: ROLLBACK failed; destroying the connection')(error)
        return true
      })
    lease.release(failed)
    return null
  }
}
