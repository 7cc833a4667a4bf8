import type pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import type { CompiledQuery, DatabaseConnection, QueryResult } from 'kysely'
import { AcquireDeadlines } from './acquire-deadlines.js'
import { beginWithQuery } from './begin-with-query.js'
import { AcquireTimeoutError, ClosingError, ConnectionFailedError, ConnectionLostError, knownQueryError, StreamUnsupportedError, withRetryAfter } from './errors.js'
import type { CircuitBreaker } from './circuit-breaker.js'
import type { PoolCounters } from './pool-stats.js'
import { refuseSessionState } from './session-state.js'
import { forgetWaiter, isQueryable, returnsClean } from './pg-internals.js'

// pg-pool reports its own connectionTimeoutMillis this way (it has no error code); ours says the same.
const PG_TIMEOUT_MESSAGE = 'timeout exceeded when trying to connect'
/** PgBouncer's error when no server connection became free in time; it then closes the client. */
const PGBOUNCER_WAIT_TIMEOUT = 'query_wait_timeout'
const NO_PARAMETERS: readonly unknown[] = []

/** Hands out pooled connections with a deadline, and knows every one that is checked out. */
export class ConnectionSource {
  readonly pool: pg.Pool
  readonly counters: PoolCounters
  readonly log: FastifyBaseLogger
  /** Checked-out connections, so that close() can end what their owners never did. */
  readonly leases = new Set<Lease>()
  /** Our acquire deadline, when the pool does not keep one (pg-pool's connectionTimeoutMillis). */
  readonly #deadlines: AcquireDeadlines | null
  readonly #boundedConnects: boolean
  readonly #reportedDeadline: number
  readonly #breaker: CircuitBreaker | null
  #closed = false

  /**
   * `boundedConnects`: the pool's clients have a connect timeout of the deadline's length (the
   * owned pool's do), so a connection made at once for a caller needs no deadline of ours.
   */
  constructor (pool: pg.Pool, counters: PoolCounters, log: FastifyBaseLogger, deadlines: { own: number, reported: number, boundedConnects: boolean }, breaker: CircuitBreaker | null) {
    this.pool = pool
    this.counters = counters
    this.log = log
    this.#deadlines = deadlines.own > 0 ? new AcquireDeadlines(deadlines.own) : null
    this.#boundedConnects = deadlines.boundedConnects
    this.#reportedDeadline = deadlines.reported
    this.#breaker = breaker
  }

  get circuitOpen (): boolean {
    return this.#breaker?.open ?? false
  }

  close (): void {
    this.#closed = true
  }

  /** A connection from the pool, within the acquire deadline; through pg-pool's callback, which costs no promise of its own. */
  acquire (): Promise<Lease> {
    if (this.#closed) return Promise.reject(new ClosingError())
    const refused = this.#admit()
    if (refused !== null) return Promise.reject(refused)
    const asked = performance.now()
    return new Promise((resolve, reject) => {
      const expire = (): void => {
        // pg-pool's own timeout takes a waiter out of its queue the same way; one whose new
        // connection is being made is not in it, and gets its answer late.
        forgetWaiter(this.pool, answer)
        reject(this.#timedOut(new Error(PG_TIMEOUT_MESSAGE)))
      }
      // As with pg-pool's own deadline: a caller that waits in the pool's queue gets the timeout;
      // one for whom a connection is made at once gets that connection's outcome (two timers of
      // the same length would otherwise race for which error it sees).
      const waiter = this.#deadlines === null || this.#connectsAtOnce() ? null : this.#deadlines.wait(asked, expire)
      const answer = (cause: Error | null | undefined, client?: pg.PoolClient): void => {
        if (waiter !== null) {
          if (waiter.expired) {
            // Already answered with the timeout: a late connection goes back to the pool, and a
            // late failure still counts against the database.
            if (client !== undefined) client.release()
            else this.#breaker?.failed()
            return
          }
          (this.#deadlines as AcquireDeadlines).answered(waiter)
        }
        if (cause !== null && cause !== undefined) {
          reject(this.#acquireError(cause))
          return
        }
        this.#breaker?.succeeded()
        // A caller that waited in the pool's queue while close() ran gets no connection after it.
        if (this.#closed) {
          (client as pg.PoolClient).release()
          reject(new ClosingError())
          return
        }
        const acquired = performance.now()
        this.counters.acquires++
        this.counters.acquireWait.observe((acquired - asked) / 1000)
        const lease = new Lease(client as pg.PoolClient, this, acquired)
        this.leases.add(lease)
        resolve(lease)
      }
      this.pool.connect(answer)
    })
  }

  /** pg-pool makes a new connection for this caller right away, bounded by its connect timeout. */
  #connectsAtOnce (): boolean {
    return this.#boundedConnects && this.pool.idleCount === 0 && this.pool.totalCount < (this.pool.options.max as number)
  }

  /** The circuit breaker's refusal, if it refuses. */
  #admit (): Error | null {
    try {
      this.#breaker?.admit()
      return null
    } catch (error) {
      this.counters.circuitRejections++
      return error as Error
    }
  }

  #acquireError (cause: Error): Error {
    if (cause.message === PG_TIMEOUT_MESSAGE) return this.#timedOut(cause)
    this.#breaker?.failed()
    return new ConnectionFailedError(cause.message, { cause })
  }

  #timedOut (cause: Error): Error {
    // A full pool says nothing about the database's health.
    this.#breaker?.inconclusive()
    this.counters.acquireTimeouts++
    // Fastify's error handler sends the header; a load balancer or client can back off.
    return withRetryAfter(new AcquireTimeoutError(`${this.#reportedDeadline} ms`, { cause }), Math.ceil(this.#reportedDeadline / 1000))
  }

  /**
   * What a failed BEGIN is reported as. PgBouncer in transaction mode gives a server connection at
   * BEGIN, not at connect: its query_wait_timeout is the same overload as our acquire deadline.
   */
  beginError (cause: Error): Error {
    if (cause.message !== PGBOUNCER_WAIT_TIMEOUT) return new ConnectionFailedError(cause.message, { cause })
    this.counters.acquireTimeouts++
    return withRetryAfter(new AcquireTimeoutError('PgBouncer\'s query_wait_timeout', { cause }), 1)
  }
}

/**
 * One checkout of a pooled client: listened to while out (pg-pool does not), returned exactly
 * once, and destroyed rather than returned when its state is in doubt.
 */
export class Lease implements DatabaseConnection {
  readonly client: pg.PoolClient
  readonly #source: ConnectionSource
  /** performance.now() when it was checked out. */
  readonly acquiredAt: number
  #error: Error | null = null
  #released = false
  /** Why the connection is being destroyed, once it is (close(), the hold limit). */
  #condemnation: Error | null = null
  /** Keeps and logs the first error that broke the connection; a dying one reports several. */
  broke (error: Error): void {
    if (this.#error !== null) return
    this.#error = error
    this.#source.log.warn({ err: error }, 'fastify-db-session: a checked-out database connection failed; it will be destroyed')
  }

  constructor (client: pg.PoolClient, source: ConnectionSource, acquiredAt: number) {
    this.client = client
    this.#source = source
    this.acquiredAt = acquiredAt
    const listened = client as ListenedClient
    // One listener for the client's life, rather than one added and removed per checkout.
    if (listened[kLease] === undefined) client.on('error', toLease)
    listened[kLease] = this
  }

  /** Given back, or condemned: no transaction statement may be sent on it any more. */
  get gone (): boolean {
    return this.#released || this.#condemnation !== null
  }

  /**
   * Marks the connection for destruction before its socket is closed (its running statement is
   * canceled first): its queries then fail with `reason`, and nothing more is sent for the transaction.
   */
  condemn (reason: Error): void {
    this.#condemnation ??= reason
  }

  /** The `PostgresPoolClient` face, for `fastify.db.kysely`. */
  query (sql: string, parameters: readonly unknown[]): Promise<pg.QueryResult> {
    return this.client.query(sql, parameters as unknown[])
  }

  /**
   * The `DatabaseConnection` face (every query of an open transaction): results shaped as Kysely's
   * PostgresDriver shapes them, errors as queryError says.
   */
  async executeQuery<R> (compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    refuseSessionState(compiledQuery.sql)
    try {
      return kyselyResult(await this.command(compiledQuery.sql, compiledQuery.parameters))
    } catch (error) {
      throw this.queryError(error as Error)
    }
  }

  /**
   * A transaction's first query behind `prelude` (BEGIN and its settings), in one round trip;
   * pg's raw result. A BeginFailure means no transaction was opened; other errors are pg's, for
   * the caller to pass through queryError where it awaits, so that their stacks lead back to it.
   */
  runAfter (prelude: readonly string[], compiledQuery: CompiledQuery): Promise<pg.QueryResult> {
    return beginWithQuery(this.client, prelude, compiledQuery.sql, compiledQuery.parameters)
  }

  /** What a failed query is reported as: a lost connection, a serialization failure or deadlock (409), or pg's error. */
  queryError (error: Error): Error {
    if (this.#condemnation !== null) return this.#condemnation
    if (this.noteFailure(error)) return new ConnectionLostError((this.failure as Error).message, { cause: this.failure })
    const known = knownQueryError(error)
    if (known !== null) return known
    // pg's own error carries the stack of the socket's read: point it at the caller instead.
    Error.captureStackTrace(error)
    return error
  }

  /** One statement, through pg's callback: a promise of our own rather than pg's two. */
  command (sql: string, parameters: readonly unknown[] = NO_PARAMETERS): Promise<pg.QueryResult> {
    return new Promise((resolve, reject) => {
      this.client.query(sql, parameters as unknown[], (error: Error | null, result: pg.QueryResult) => {
        if (error === null) resolve(result)
        else reject(error)
      })
    })
  }

  async * streamQuery<R> (): AsyncIterableIterator<QueryResult<R>> {
    throw new StreamUnsupportedError()
  }

  /**
   * Remembers a query error that leaves the connection unusable, so that release() destroys it
   * (the backend's FATAL answer can arrive before the socket closes); true if the connection is lost.
   */
  noteFailure (error: Error): boolean {
    if (breaksConnection(error, this.client)) this.broke(error)
    return this.#error !== null
  }

  /** The first error that broke the connection: the real reason later errors only echo. */
  get failure (): Error | null {
    return this.#error
  }

  /** Gives the client back, or destroys it when asked to, when it failed, or when it is still inside a transaction. */
  release (discard = false): void {
    if (this.#released) return
    this.#released = true
    this.#source.leases.delete(this)
    this.#source.counters.hold.observe((performance.now() - this.acquiredAt) / 1000)
    const listened: ListenedClient = this.client
    listened[kLease] = null
    // pg-pool itself drops a client that is no longer queryable; count it as destroyed too.
    const inDoubt = discard || this.#error !== null || !returnsClean(this.client)
    if (inDoubt) this.#source.counters.destroyed++
    this.client.release(inDoubt ? (this.#error ?? new Error('fastify-db-session: connection state in doubt')) : undefined)
  }
}

const kLease = Symbol('fastify-db-session.lease')
type ListenedClient = pg.PoolClient & { [kLease]?: Lease | null }

/** A client's error, to its lease while it is checked out; when idle, pg-pool's own listener reports it. */
function toLease (this: ListenedClient, error: Error): void {
  this[kLease]?.broke(error)
}

/** A pg result as Kysely's PostgresDriver shapes it (several statements give pg an array: no rows). */
export function kyselyResult<R> ({ command, rowCount, rows = [] }: pg.QueryResult): QueryResult<R> {
  return {
    numAffectedRows: command === 'INSERT' || command === 'UPDATE' || command === 'DELETE' || command === 'MERGE'
      ? BigInt(rowCount as number)
      : undefined,
    rows
  }
}

/**
 * True for errors after which the connection cannot be trusted: a FATAL or PANIC from the server,
 * a connection exception (class 08), or a driver error (no SQLSTATE) that left pg's client
 * unqueryable. A driver error on a healthy client (a value pg cannot serialize) is not one.
 */
function breaksConnection (error: Error, client: pg.PoolClient): boolean {
  const { severity, code } = error as { severity?: string, code?: string }
  if (code === undefined) return !isQueryable(client)
  return code.startsWith('08') || severity === 'FATAL' || severity === 'PANIC'
}
