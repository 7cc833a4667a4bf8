import type pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import { AcquireDeadlines } from './acquire-deadlines.js'
import type { CircuitBreaker } from './circuit-breaker.js'
import { classify, PG_TIMEOUT_MESSAGE } from './classify.js'
import { cancelStatement } from './cancel-statement.js'
import { AcquireTimeoutError, ClosingError } from './errors.js'
import { Lease } from './lease.js'
import type { LeaseOwner } from './lease.js'
import type { Telemetry } from './metrics.js'
import { forgetWaiter } from './pg-internals.js'
import type { PreparedStatements } from './prepared-statements.js'

/** Hands out pooled connections with a deadline, and knows every one that is checked out. */
export class ConnectionSource implements LeaseOwner {
  readonly pool: pg.Pool
  readonly telemetry: Telemetry
  readonly log: FastifyBaseLogger
  readonly statements: PreparedStatements | null
  /** Checked-out connections, so that close() can end what their owners never did. */
  readonly leases = new Set<Lease>()
  /** Our acquire deadline, when the pool does not keep one (pg-pool's connectionTimeoutMillis). */
  readonly #deadlines: AcquireDeadlines | null
  /** The pool's new connections have a connect timeout of ours (the owned pool's). */
  readonly #boundedConnects: boolean
  /** A connection made at once for a caller ends, made or failed, within the caller's deadline. */
  readonly #connectsWithinDeadline: boolean
  readonly #reportedDeadline: number
  readonly #breaker: CircuitBreaker | null
  /** How long a cancel of a destroyed connection's statement may take (closeTimeoutMillis). */
  readonly #cancelTimeoutMillis: number
  #closed = false
  /** Callers waiting for a connection: close() answers them with FST_DB_SESSION_CLOSING. */
  readonly #waiting = new Set<() => void>()

  /**
   * `connect`: the connect timeout of the pool's new connections (the owned pool's), 0 for none
   * of ours. When it is no longer than the deadline, a caller for whom a connection is made at
   * once needs no deadline of ours: that connection's outcome comes first.
   */
  constructor (pool: pg.Pool, telemetry: Telemetry, log: FastifyBaseLogger, deadlines: { own: number, reported: number, connect: number, cancel: number }, breaker: CircuitBreaker | null, statements: PreparedStatements | null = null) {
    this.pool = pool
    this.telemetry = telemetry
    this.log = log
    this.statements = statements
    this.#deadlines = deadlines.own > 0 ? new AcquireDeadlines(deadlines.own) : null
    this.#boundedConnects = deadlines.connect > 0
    this.#connectsWithinDeadline = this.#boundedConnects && deadlines.connect <= deadlines.own
    this.#reportedDeadline = deadlines.reported
    this.#breaker = breaker
    this.#cancelTimeoutMillis = deadlines.cancel
  }

  /** The acquire deadline, ours or the pool's: how long a caller waits for a connection. */
  get deadlineMillis (): number {
    return this.#reportedDeadline
  }

  get circuitOpen (): boolean {
    return this.#breaker?.open ?? false
  }

  /** Refuses new callers, and answers those still waiting for a connection at once. */
  close (): void {
    this.#closed = true
    for (const abandon of this.#waiting) abandon()
    this.#waiting.clear()
  }

  /**
   * Destroys leases: their running statements are canceled first, then their sockets closed, and
   * PostgreSQL rolls back what they held as their backends end.
   */
  async destroy (leases: Lease[], reason: Error): Promise<void> {
    for (const lease of leases) lease.condemn(reason)
    await Promise.all(leases.map((lease) => this.cancel(lease)))
    for (const lease of leases) lease.release(true)
  }

  /** Cancels the statement a lease is running, with its connection's own key; resolves within closeTimeoutMillis. */
  cancel (lease: Lease): Promise<void> {
    return cancelStatement(lease.client, this.#cancelTimeoutMillis)
  }

  /** Destroys every connection still checked out (close()); each one counts as a leak. */
  destroyCheckedOut (): Promise<void> {
    // Not those being destroyed already (preClose's timer, the hold limit).
    const stuck = [...this.leases].filter((lease) => !lease.gone)
    this.telemetry.leaked(stuck.length)
    return this.destroy(stuck, new ClosingError())
  }

  /** A connection from the pool, within the acquire deadline; through pg-pool's callback, which costs no promise of its own. */
  acquire (): Promise<Lease> {
    if (this.#closed) return Promise.reject(new ClosingError())
    const refused = this.#admit()
    if (refused !== null) return Promise.reject(refused)
    const asked = performance.now()
    return new Promise((resolve, reject) => {
      let abandoned = false
      // A connection is made for this caller: its outcome, even after the deadline, is the database's.
      const connects = this.#connectsNow()
      const expire = (): void => {
        // pg-pool's own timeout takes a waiter out of its queue the same way; one whose new
        // connection is being made is not in it, and gets its answer late.
        this.#waiting.delete(abandon)
        forgetWaiter(this.pool, answer)
        reject(this.#acquireError(new Error(PG_TIMEOUT_MESSAGE), connects))
      }
      // close() does not wait for the connection: while the pool shuts down, a queued caller
      // might get one handed back by a rollback, or wait for its deadline on a pool that ended.
      const abandon = (): void => {
        abandoned = true
        if (waiter !== null) (this.#deadlines as AcquireDeadlines).answered(waiter)
        forgetWaiter(this.pool, answer)
        reject(new ClosingError())
      }
      // A caller that waits in the pool's queue gets the timeout. One for whom a connection is
      // made at once gets that connection's outcome when its connect timeout ends first (two
      // timers of the same length would otherwise race for which error it sees); otherwise the
      // deadline answers it, and the connection, once made, serves the next caller.
      const waiter = this.#deadlines === null || (connects && this.#connectsWithinDeadline) ? null : this.#deadlines.wait(asked, expire)
      const answer = (cause: Error | null | undefined, client?: pg.PoolClient): void => {
        this.#waiting.delete(abandon)
        if (abandoned) {
          // A connection made for a caller that close() answered goes back, to be ended with the pool.
          client?.release()
          return
        }
        if (waiter !== null) {
          if (waiter.expired) {
            // Already answered with the timeout: a late connection goes back to the pool for the
            // next caller (and a circuit breaker's probe succeeded), and a late failure still
            // counts against the database, and is told.
            if (client !== undefined) {
              client.release()
              this.#breaker?.succeeded()
            } else if (!this.#closed) {
              // (A connect that close() cut short says nothing of the database.)
              this.#breaker?.failed()
              this.log.warn({ err: cause }, 'fastify-db-session: a new database connection failed after the request it was made for had timed out')
            }
            return
          }
          (this.#deadlines as AcquireDeadlines).answered(waiter)
        }
        if (cause !== null && cause !== undefined) {
          reject(this.#acquireError(cause))
          return
        }
        this.#breaker?.succeeded()
        const acquired = performance.now()
        this.telemetry.acquired((acquired - asked) / 1000)
        const lease = new Lease(client as pg.PoolClient, this, acquired)
        this.leases.add(lease)
        resolve(lease)
      }
      this.#waiting.add(abandon)
      this.pool.connect(answer)
    })
  }

  /** pg-pool makes a new connection for this caller right away, with a connect timeout of ours. */
  #connectsNow (): boolean {
    return this.#boundedConnects && this.pool.idleCount === 0 && this.pool.totalCount < (this.pool.options.max as number)
  }

  /** The circuit breaker's refusal, if it refuses. */
  #admit (): Error | null {
    try {
      this.#breaker?.admit()
      return null
    } catch (error) {
      this.telemetry.circuitRejected()
      return error as Error
    }
  }

  /**
   * What a failed acquire is reported as (classify's 'acquire'). `connecting`: a connection being
   * made for the caller outlived its deadline; its own outcome will tell the circuit breaker.
   */
  #acquireError (cause: Error, connecting = false): Error {
    const { error } = classify(cause, 'acquire', { acquireTimeoutMillis: this.#reportedDeadline })
    if (error instanceof AcquireTimeoutError) {
      // A full pool says nothing about the database's health; a probe's connect still under way
      // keeps its place until it ends, so that no second probe goes out beside it.
      if (!connecting) this.#breaker?.inconclusive()
      this.telemetry.acquireTimedOut()
    } else {
      this.#breaker?.failed()
    }
    return error
  }

  /** What a failed BEGIN is reported as (classify's 'begin'): PgBouncer's query_wait_timeout is an acquire timeout. */
  beginError (cause: Error): Error {
    const { error } = classify(cause, 'begin')
    if (error instanceof AcquireTimeoutError) this.telemetry.acquireTimedOut()
    return error
  }
}
