import type pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import type { CompiledQuery, QueryResult } from 'kysely'
import { beginWithQuery } from './begin-with-query.js'
import { classify } from './classify.js'
import type { Telemetry } from './metrics.js'
import { isParsed, isQueryable, returnsClean } from './pg-internals.js'
import type { PreparedStatements } from './prepared-statements.js'
import { refuseSessionState } from './sql.js'

const NO_PARAMETERS: readonly unknown[] = []
const NO_PRELUDE: readonly string[] = []

/** What a lease reports to: the source that handed it out. */
export interface LeaseOwner {
  /** Checked-out connections; a lease leaves the set when it is given back. */
  readonly leases: Set<Lease>
  readonly telemetry: Telemetry
  readonly log: FastifyBaseLogger
  /** Which queries go as named statements (the preparedStatements option); null: none. */
  readonly statements: PreparedStatements | null
}

/**
 * One checkout of a pooled client: listened to while out (pg-pool does not), returned exactly
 * once, and destroyed rather than returned when its state is in doubt.
 */
export class Lease {
  readonly client: pg.PoolClient
  /** The source that handed it out (the primary's or a replica's). */
  readonly owner: LeaseOwner
  readonly #owner: LeaseOwner
  /** performance.now() when it was checked out. */
  readonly acquiredAt: number
  #error: Error | null = null
  #released = false
  /** Why the connection is being destroyed, once it is (close(), the hold limit). */
  #condemnation: Error | null = null
  /** A query failed with a serialization failure or deadlock: rerunning the whole unit of work may succeed. */
  #conflict = false
  /** Keeps and logs the first error that broke the connection; a dying one reports several. */
  broke (error: Error): void {
    if (this.#error !== null) return
    this.#error = error
    this.#owner.log.warn({ err: error }, 'fastify-db-session: a checked-out database connection failed; it will be destroyed')
  }

  constructor (client: pg.PoolClient, owner: LeaseOwner, acquiredAt: number) {
    this.client = client
    this.owner = owner
    this.#owner = owner
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
    const { sql, parameters } = compiledQuery
    const name = this.#owner.statements?.nameFor(compiledQuery)
    try {
      return kyselyResult(await (name === undefined ? this.command(sql, parameters) : beginWithQuery(this.client, NO_PRELUDE, sql, parameters, name)))
    } catch (error) {
      throw this.queryError(error as Error, sql)
    }
  }

  /**
   * A transaction's first query behind `prelude` (BEGIN and its settings), in one round trip;
   * pg's raw result. A BeginFailure means no transaction was opened; other errors are pg's, for
   * the caller to pass through queryError where it awaits, so that their stacks lead back to it.
   */
  runAfter (prelude: readonly string[], compiledQuery: CompiledQuery): Promise<pg.QueryResult> {
    return beginWithQuery(this.client, prelude, compiledQuery.sql, compiledQuery.parameters, this.#owner.statements?.nameFor(compiledQuery))
  }

  /**
   * What a failed query is reported as (classify's 'query'); a connection it broke is remembered,
   * to be destroyed. `sql`: the query's text, for a prepared statement that can no longer run.
   */
  queryError (error: Error, sql?: string): Error {
    if (sql !== undefined) this.#owner.statements?.failed(sql, error, (name) => isParsed(this.client, name))
    if (this.#condemnation !== null) return this.#condemnation
    const classified = classify(error, 'query', this.circumstances())
    // Kept here, not read from the error: a handler may catch it, wrap it, or answer 409 itself.
    if (classified.retryable) this.#conflict = true
    if (classified.broken) this.broke(error)
    // pg's own error carries the stack of the socket's read: point it at the caller instead.
    else if (classified.error === error) Error.captureStackTrace(error)
    return classified.error
  }

  /** What classify needs to know of this connection: how it broke, if it did, and whether pg still takes queries on it. */
  circumstances (): { failure: Error | null, queryable: boolean } {
    return { failure: this.#error, queryable: isQueryable(this.client) }
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

  /** A query of this checkout failed with a serialization failure or deadlock (40001, 40P01). */
  get conflict (): boolean {
    return this.#conflict
  }

  /** The first error that broke the connection: the real reason later errors only echo. */
  get failure (): Error | null {
    return this.#error
  }

  /** Gives the client back, or destroys it when asked to, when it failed, or when it is still inside a transaction. */
  release (discard = false): void {
    if (this.#released) return
    this.#released = true
    this.#owner.leases.delete(this)
    const listened: ListenedClient = this.client
    listened[kLease] = null
    // pg-pool itself drops a client that is no longer queryable; count it as destroyed too.
    const inDoubt = discard || this.#error !== null || !returnsClean(this.client)
    this.#owner.telemetry.released((performance.now() - this.acquiredAt) / 1000, inDoubt)
    this.client.release(inDoubt ? (this.#error ?? new Error('fastify-db-session: connection state in doubt')) : undefined)
  }
}

// Module-level on purpose: it marks a pg client with its current lease, and a user's pool shared
// by two registrations hands the same client to each in turn. Per-registration state lives in registration.ts.
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
