import type pg from 'pg'
import type { CompiledQuery, DatabaseConnection, PostgresCursorConstructor, QueryResult } from 'kysely'
import type { ConnectionSource } from './connection-source.js'
import { AutocommitUnsupportedError, ConnectionKilledError, StreamUnsupportedError } from './errors.js'
import type { Lease } from './lease.js'
import { refuseSessionState } from './sql.js'
import type { UnitOfWork } from './unit-of-work.js'

/**
 * The connection Kysely's own executor gets from a unit of work (queries with an AbortSignal,
 * plugins added on the transaction, stream()), for as long as the unit's queue lends it: the
 * lease's queries, a cursor's stream, and the in-flight abort strategies Kysely asks a
 * connection for, done with the plugin's own means (a CancelRequest with the connection's key,
 * which PgBouncer forwards too, rather than Kysely's pg_cancel_backend on a second connection).
 */
export class WorkConnection implements DatabaseConnection {
  readonly #lease: Lease
  readonly #work: UnitOfWork
  readonly #source: ConnectionSource
  readonly #cursor: PostgresCursorConstructor | null

  constructor (lease: Lease, work: UnitOfWork, source: ConnectionSource, cursor: PostgresCursorConstructor | null) {
    this.#lease = lease
    this.#work = work
    this.#source = source
    this.#cursor = cursor
  }

  executeQuery<R> (compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    return this.#work.execute(this.#lease, compiledQuery)
  }

  /** As Kysely's PostgresConnection streams: a cursor read `chunkSize` rows at a time, closed at the end. */
  async * streamQuery<R> (compiledQuery: CompiledQuery, chunkSize: number): AsyncIterableIterator<QueryResult<R>> {
    if (this.#cursor === null) throw new StreamUnsupportedError()
    // A cursor lives in a transaction; the autocommit settings would not reach its statement.
    if (this.#work.autocommit) throw new AutocommitUnsupportedError('stream()')
    refuseSessionState(compiledQuery.sql)
    this.#work.note(compiledQuery.sql)
    const lease = this.#lease
    const cursor = new this.#cursor<R>(compiledQuery.sql, compiledQuery.parameters.slice())
    // pg takes a cursor as a Submittable and runs it like a query, in its turn on the client.
    lease.client.query(cursor as unknown as pg.Submittable)
    try {
      while (true) {
        const rows = await cursor.read(chunkSize).catch((error: Error) => { throw lease.queryError(error) })
        if (rows.length === 0) return
        yield { rows }
      }
    } finally {
      await cursor.close()
    }
  }

  /**
   * 'cancel query': the running statement is canceled; PostgreSQL aborts the transaction, so its
   * later queries fail with 25P02 and a commit becomes FST_DB_SESSION_TRANSACTION_ABORTED. Kysely
   * calls this only while the query runs, and the unit's queue sends nothing else on the
   * connection before it resolves (a cancel that arrives between statements is ignored).
   */
  cancelQuery (): Promise<void> {
    return this.#source.cancel(this.#lease)
  }

  /**
   * 'kill session': the unit of work is rolled back by destroying its connection (its statement
   * canceled first, then the socket closed, never returned to the pool); its later queries are
   * refused, and an owner that still commits gets FST_DB_SESSION_CONNECTION_KILLED.
   */
  killSession (): Promise<void> {
    const error = new ConnectionKilledError()
    this.#work.interrupt(error)
    return this.#source.destroy([this.#lease], error)
  }
}
