import type pg from 'pg'
import type { CompiledQuery, QueryResult } from 'kysely'
import { autocommitPrelude, runAutocommit } from './autocommit.js'
import { BeginFailure, canFollowBegin } from './begin-with-query.js'
import { ignore, logWarning } from './callbacks.js'
import { classify } from './classify.js'
import { commitWithPosition } from './commit-with-position.js'
import { CommitHooks } from './commit-hooks.js'
import type { HookOwner } from './commit-hooks.js'
import type { ConnectionSource } from './connection-source.js'
import { ClosingError, CommitOutcomeUnknownError, HoldTimeoutError, TransactionAbortedError, TransactionFinishedError } from './errors.js'
import { kyselyResult } from './lease.js'
import type { Lease } from './lease.js'
import type { LeakOwner, LeakWatch } from './leak-watch.js'
import type { UnitSpan, UnitTracing } from './otel-tracing.js'
import { parseLsn } from './lsn.js'
import type { ReplicaRouter } from './replica-router.js'
import { holdsUntilCommit, refuseSessionState } from './sql.js'
import type { BeginSettings } from './transaction-settings.js'

const SETTLED = Promise.resolve()

/**
 * Where a unit of work stands: one field; whether it still takes queries is read from it in one
 * place (#accepting). The connection (#lease) and the finish's promise (#finishing) are what the
 * states hold, not other answers to where it stands.
 *
 *   idle ──first query──▶ opening ──BEGIN answered──▶ open
 *     ▲                      │ acquire or BEGIN failed     │
 *     └──────────────────────┘                             │
 *   idle | opening | open ──finish()──▶ finishing (queries already issued end; new ones are refused)
 *   finishing ──▶ never opened                      (no transaction was open)
 *             ──▶ committing ──▶ committed | commit failed | outcome unknown
 *             ──▶ rolling back ──▶ rolled back      (asked, or the connection was destroyed)
 */
export type Status = 'idle' | 'opening' | 'open' | 'finishing' | 'committing' | 'rolling back' | Outcome['status']

/** How a unit of work ended: what finish() resolves to. */
export interface Outcome {
  readonly status: 'never opened' | 'committed' | 'rolled back' | 'commit failed' | 'outcome unknown'
  /**
   * What an owner that asked to commit must surface: why COMMIT failed, or that it could not be
   * had (the connection was destroyed by close() or the hold limit); null otherwise.
   */
  readonly error: Error | null
  /** Why the work was finished ("the response was sent", "the client went away", ...). */
  readonly reason: string
  /**
   * It did not commit, and a serialization failure or deadlock (40001, 40P01) ended it, in a query
   * or at COMMIT: rerunning the whole unit of work may succeed. False when close() or the hold
   * limit ended it.
   */
  readonly retryable: boolean
  /**
   * The WAL position its COMMIT reached on the primary (`X/Y`), when it wrote and replicas are
   * configured (read-your-writes); null otherwise.
   */
  readonly position: string | null
}

/** What every unit of work of one registration shares. */
export interface WorkRuntime {
  readonly source: ConnectionSource
  /** Units of work holding or opening a connection, so that close() can end them. */
  readonly live: Set<UnitOfWork>
  /** Watches how long units of work hold their connections; null when leak detection is off. */
  readonly leakWatch: LeakWatch | null
  /** Starts the units of work's spans; null when nothing traces them. */
  readonly tracing: UnitTracing | null
  /** Places read only work on replicas and learns the primary's commit positions; null without replicas. */
  readonly router: ReplicaRouter | null
}

/** Where a unit of work that a replica may serve gets its connection (replica-router.ts). */
export type Placement = () => Promise<Lease>

/**
 * One unit of work: a transaction opened by its first query, its queries run one at a time, and
 * one idempotent finish that commits or rolls back, then returns the connection exactly once.
 * Knows neither Fastify nor Kysely's builders: kysely-executor.ts puts Kysely in front of it,
 * request-scope.ts and registration.ts own and finish it.
 */
export class UnitOfWork {
  readonly #runtime: WorkRuntime
  readonly #settings: BeginSettings
  /** Builds the statement that follows BEGIN in its round trip (the context's set_config calls), or null. */
  readonly #context: (() => string) | null
  #status: Status = 'idle'
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
  #finishing: Promise<Outcome> | null = null
  #finishReason = ''
  /** Why the work was ended for its owner (close()): reported, once, to whoever then asks to commit. */
  #interruption: Error | null = null
  /** Describes the owner for a leak report; only called when leak detection is on. */
  readonly #owner: (() => LeakOwner) | null
  /** Where the first query was issued, kept for a leak report. */
  #firstQuery: Error | null = null
  #stopWatching: () => void = ignore
  /** The afterCommit / afterRollback callbacks, made by the first registration: work without any pays nothing. */
  #hooks: CommitHooks | null = null
  /** Its OpenTelemetry span (otel-tracing.ts), or null: its statements then run as they are, at no cost. */
  readonly #span: UnitSpan | null
  /** Picks a replica or the primary at the first acquire; null: the primary's source. */
  readonly #placement: Placement | null
  /** The source its connection came from: the primary's, or a replica's once placed there. */
  #source: ConnectionSource
  /**
   * A read-only transaction whose COMMIT the response may skip waiting for: cleared by a query
   * that failed (its COMMIT then answers ROLLBACK, which the client must hear) or that holds
   * something until COMMIT (a lock, a NOTIFY).
   */
  #quietCommit: boolean
  /** `autocommit: true`: what goes before each query, built with the first one (the context is read once per unit). */
  #autocommitPrelude: readonly string[] | null = null

  constructor (runtime: WorkRuntime, settings: BeginSettings, context: (() => string) | null = null, owner: (() => LeakOwner) | null = null, span: UnitSpan | null = null, placement: Placement | null = null) {
    this.#runtime = runtime
    this.#settings = settings
    this.#quietCommit = settings.quietCommit
    this.#context = context
    this.#owner = owner
    this.#span = span
    this.#placement = placement
    this.#source = runtime.source
  }

  /** finish() was called: no query is taken any more. */
  get finished (): boolean {
    return !this.#accepting()
  }

  /** Queries are taken until finish() is called; the one test of it, for the guard and for `finished`. */
  #accepting (): boolean {
    return this.#status === 'idle' || this.#status === 'opening' || this.#status === 'open'
  }

  /**
   * The callbacks run when this work ends, made on first use for `owner` (who logs a failing one).
   * Refused once finish() was called: it has already decided what runs.
   */
  hooks (owner: () => HookOwner): CommitHooks {
    if (!this.#accepting()) throw new TransactionFinishedError(this.#finishReason)
    this.#hooks ??= new CommitHooks(owner(), this.#runtime.source.telemetry)
    return this.#hooks
  }

  /** `autocommit: true`: each query is its own transaction; nothing needs or has a transaction of the unit's. */
  get autocommit (): boolean {
    return this.#settings.autocommit !== null
  }

  /**
   * Whether its owner may answer before the COMMIT: a read-only transaction below serializable
   * with no failed query, nothing held until COMMIT, no query still running and no callbacks
   * (the response waits for afterCommit ones). Its COMMIT can lose nothing and report nothing
   * the client must hear; the finish still commits and gives the connection back after.
   */
  get answersBeforeCommit (): boolean {
    return this.#quietCommit && !this.#running && this.#hooks === null && this.#settings.autocommit === null
  }

  /** A statement about to run: one that holds something until COMMIT makes the response wait for it. */
  note (sql: string): void {
    if (this.#quietCommit && holdsUntilCommit(sql)) this.#quietCommit = false
  }

  /** Runs a query on the unit's connection (lent to Kysely's executor): in the transaction, or behind the autocommit settings. */
  execute<R> (lease: Lease, compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    this.note(compiledQuery.sql)
    return this.#autocommitPrelude === null ? lease.executeQuery(compiledQuery) : runAutocommit(lease, this.#autocommitPrelude, compiledQuery)
  }

  /** Where a savepoint's callbacks start (see CommitHooks.mark); 0 while none was registered. */
  get hooksMark (): number {
    return this.#hooks?.mark ?? 0
  }

  /** A savepoint started at `mark` was rolled back: drop its afterCommit callbacks, run its afterRollback ones. */
  rolledBackTo (mark: number): Promise<void> {
    return this.#hooks === null ? SETTLED : this.#hooks.rolledBackTo(mark)
  }

  /** Runs a query in the transaction, opening it with this query when it is the first. */
  query<R> (compiledQuery: CompiledQuery<R>): Promise<QueryResult<R>> {
    const refused = this.#refusal()
    if (refused !== null) return refused
    return this.#running ? this.#later(() => this.#runQuery(compiledQuery)) : this.#runQuery(compiledQuery)
  }

  /** Hands the open transaction's connection to `consumer`, in its turn, opening the transaction first if needed. */
  provide<T> (consumer: (connection: Lease) => Promise<T>): Promise<T> {
    const refused = this.#refusal()
    if (refused !== null) return refused
    return this.#running ? this.#later(() => this.#runConsumer(consumer)) : this.#runConsumer(consumer)
  }

  /** The guard: a query after finish() is refused; a first query is remembered for a leak report. */
  #refusal (): Promise<never> | null {
    if (!this.#accepting()) {
      return Promise.reject(new TransactionFinishedError(this.#finishReason))
    }
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
    this.#running = true
    // A flag rather than a catch: the response waits for the COMMIT of a unit where a query failed.
    let succeeded = false
    try {
      const result = await (this.#span === null ? this.#send(compiledQuery) : this.#span.query(() => this.#send(compiledQuery)))
      succeeded = true
      return result
    } finally {
      if (!succeeded) this.#quietCommit = false
      this.#next()
    }
  }

  #send<R> (compiledQuery: CompiledQuery<R>): Promise<QueryResult<R>> {
    if (this.#lease !== null) return this.execute(this.#lease, compiledQuery)
    this.note(compiledQuery.sql)
    return this.#openWith(compiledQuery)
  }

  async #runConsumer<T> (consumer: (connection: Lease) => Promise<T>): Promise<T> {
    this.#running = true
    let succeeded = false
    try {
      const result = await (this.#span === null ? this.#lend(consumer) : this.#span.query(() => this.#lend(consumer)))
      succeeded = true
      return result
    } finally {
      if (!succeeded) this.#quietCommit = false
      this.#next()
    }
  }

  async #lend<T> (consumer: (connection: Lease) => Promise<T>): Promise<T> {
    return consumer(this.#lease ?? await this.#open())
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
    const { autocommit } = this.#settings
    if (autocommit !== null) {
      this.#autocommitPrelude = autocommitPrelude(autocommit, this.#context === null ? null : this.#context())
      return this.#autocommitPrelude
    }
    return this.#context === null ? this.#settings.statements : [...this.#settings.statements, this.#context()]
  }

  /** Opens the transaction with its first query: one round trip for BEGIN, settings and query. */
  async #openWith<R> (compiledQuery: CompiledQuery<R>): Promise<QueryResult<R>> {
    // Later queries are checked by the lease; this one before a connection is taken.
    refuseSessionState(compiledQuery.sql)
    if (!canFollowBegin(compiledQuery.sql, compiledQuery.parameters)) return this.execute(await this.#open(), compiledQuery)
    const prelude = this.#prelude()
    const lease = await this.#acquire()
    let result: pg.QueryResult
    try {
      result = await lease.runAfter(prelude, compiledQuery)
    } catch (error) {
      if (error instanceof BeginFailure) throw this.#notOpened(lease, error.cause as Error)
      this.#opened(lease)
      throw lease.queryError(error as Error, compiledQuery.sql)
    }
    this.#opened(lease)
    return kyselyResult(result)
  }

  /** Opens the transaction on its own round trip, for a query that cannot follow BEGIN. */
  async #open (): Promise<Lease> {
    const prelude = this.#prelude()
    const lease = await this.#acquire()
    // Autocommit: nothing to open; the settings go with each query.
    if (this.#settings.autocommit !== null) {
      this.#opened(lease)
      return lease
    }
    try {
      await lease.command(prelude.join('; '))
    } catch (cause) {
      throw this.#notOpened(lease, cause as Error)
    }
    this.#opened(lease)
    return lease
  }

  async #acquire (): Promise<Lease> {
    this.#advance('idle', 'opening')
    this.#span?.acquiring()
    let lease: Lease
    try {
      lease = this.#placement === null ? await this.#source.acquire() : await this.#placed()
    } catch (error) {
      this.#advance('opening', 'idle')
      // Made in a pool callback: its stack would say nothing of who asked.
      Error.captureStackTrace(error as Error)
      throw error
    }
    this.#runtime.live.add(this)
    this.#span?.acquired(lease)
    const { leakWatch } = this.#runtime
    if (leakWatch !== null && this.#owner !== null) {
      this.#stopWatching = leakWatch.watch(this.#owner(), this.#firstQuery as Error, () => { this.#abandon(lease) })
    }
    return lease
  }

  async #placed (): Promise<Lease> {
    const lease = await (this.#placement as Placement)()
    this.#source = lease.owner as ConnectionSource
    return lease
  }

  #opened (lease: Lease): void {
    this.#lease = lease
    this.#advance('opening', 'open')
  }

  /**
   * A step of an unfinished unit of work. Once finishing, the finish decides what comes next:
   * a query that waited behind finish() may still open the transaction, for the finish to end it.
   */
  #advance (from: Status, to: Status): void {
    if (this.#status === from) this.#status = to
  }

  /** BEGIN failed: the connection is in doubt, and the query that tried gets a 503. */
  #notOpened (lease: Lease, cause: Error): Error {
    this.#advance('opening', 'idle')
    this.#runtime.live.delete(this)
    this.#stopWatching()
    lease.release(true)
    return this.#source.beginError(cause)
  }

  /** Past the hold limit: the work is rolled back by destroying its connection, whatever it is doing. */
  #abandon (lease: Lease): void {
    const error = new HoldTimeoutError(this.#runtime.leakWatch?.timeoutMillis)
    this.interrupt(error)
    if (!lease.gone) this.#source.destroy([lease], error).catch(ignore)
  }

  /**
   * Commits or rolls back after the queries already issued, and gives the connection back.
   * Idempotent: later calls get the first call's outcome. Never rejects. `cause`: the error that
   * made the owner roll back, if any, for the span.
   */
  finish (commit: boolean, reason: string, cause?: unknown): Promise<Outcome> {
    if (this.#finishing === null) {
      this.#finishReason = reason
      this.#status = 'finishing'
      // After the queries already issued, and never within this call: whoever finishes (the
      // hold limit) may destroy the connection first, and then no ROLLBACK is sent.
      const drained = this.#running ? new Promise<void>((resolve) => { this.#drained = resolve }) : SETTLED
      const span = this.#span
      // The span ends once COMMIT or ROLLBACK answered, before the callbacks run.
      const interruption = this.#interruption
      const ended = span === null
        ? drained.then(() => this.#end(commit))
        : drained.then(() => span.finish(() => this.#end(commit))).then((outcome) => span.end(outcome, cause ?? interruption))
      // The callbacks are the last step: whoever awaits the finish (the response) waits for them.
      // None can be added from here on, so work without callbacks keeps the bare promise.
      const hooks = this.#hooks
      this.#finishing = hooks === null ? ended : ended.then(async (outcome) => { await hooks.ended(outcome, commit); return outcome })
    } else if (commit && this.#interruption !== null) {
      // Its owner still means to commit, but the work was rolled back for it: say so.
      return this.#finishing.then((outcome) => ({ ...outcome, error: this.takeInterruption() }))
    }
    return this.#finishing
  }

  /** Rolls back on the owner's behalf (the server is closing, the hold limit); a later commit gets `error`. */
  interrupt (error: Error): Promise<Outcome> {
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
  #end (commit: boolean): Promise<Outcome> | Outcome {
    const lease = this.#lease
    // Never opened, or its open failed (the query that tried has already thrown).
    if (lease === null) return this.#ended('never opened', null)
    this.#runtime.live.delete(this)
    this.#stopWatching()
    // close() or the hold limit destroyed the connection: PostgreSQL rolled back; a commit cannot be had.
    if (lease.gone) {
      this.#source.telemetry.transactionEnded('rolled back')
      return this.#ended('rolled back', commit ? new ClosingError() : null)
    }
    if (this.#settings.autocommit !== null) return this.#endAutocommit(lease, commit)
    return commit ? this.#commit(lease) : this.#rollback(lease)
  }

  /**
   * Autocommit: every statement ended with its own Sync, so there is nothing to commit or roll
   * back; the connection goes back (destroyed if the handler left a transaction of its own open).
   * Its callbacks run as for a transaction that committed or rolled back, as the owner asked.
   */
  #endAutocommit (lease: Lease, commit: boolean): Outcome {
    const status = commit ? 'committed' : 'rolled back'
    this.#source.telemetry.transactionEnded(status)
    lease.release()
    return this.#ended(status, null, !commit && lease.conflict)
  }

  #ended (status: Outcome['status'], error: Error | null, retryable = false, position: string | null = null): Outcome {
    this.#status = status
    return { status, error, reason: this.#finishReason, retryable, position }
  }

  async #commit (lease: Lease): Promise<Outcome> {
    this.#status = 'committing'
    const brokenBeforeCommit = lease.failure !== null
    let error: Error | null = null
    let retryable = lease.conflict
    let position: string | null = null
    try {
      // PostgreSQL answers COMMIT with a ROLLBACK tag when an earlier statement failed.
      const { command, lsn } = this.#tracksPosition() ? await commitWithPosition(lease.client) : { command: (await lease.command('COMMIT')).command, lsn: null }
      if (command !== 'COMMIT') error = new TransactionAbortedError()
      else if (lsn !== null) {
        position = lsn
        const { health } = this.#runtime.router as ReplicaRouter
        health.committed(parseLsn(lsn))
      }
    } catch (cause) {
      const classified = classify(cause as Error, 'commit', { ...lease.circumstances(), brokenBeforeCommit })
      if (classified.broken) lease.broke(cause as Error)
      error = classified.error
      retryable ||= classified.retryable
    }
    const status = error === null ? 'committed' : error instanceof CommitOutcomeUnknownError ? 'outcome unknown' : 'commit failed'
    this.#source.telemetry.transactionEnded(status)
    lease.release()
    return this.#ended(status, error, error !== null && retryable, position)
  }

  /**
   * Read-your-writes needs this commit's position: there are replicas, the work ran on the primary
   * and may have written.
   */
  #tracksPosition (): boolean {
    return this.#runtime.router !== null && this.#source === this.#runtime.source && this.#settings.readOnly !== true
  }

  async #rollback (lease: Lease): Promise<Outcome> {
    this.#status = 'rolling back'
    const { telemetry, log } = this.#source
    telemetry.transactionEnded('rolled back')
    // A connection that already broke has nothing to roll back: PostgreSQL did it as it ended.
    if (lease.failure !== null) {
      lease.release(true)
      return this.#ended('rolled back', null, lease.conflict)
    }
    const failed = await lease.command('ROLLBACK').then(
      () => false,
      (error) => {
        logWarning(log, 'fastify-db-session: ROLLBACK failed; destroying the connection')(error)
        return true
      })
    lease.release(failed)
    return this.#ended('rolled back', null, lease.conflict)
  }
}
