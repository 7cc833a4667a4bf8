import { AcquireTimeoutError, CommitFailedError, CommitOutcomeUnknownError, ConnectionFailedError, ConnectionLostError, DeadlockError, SerializationFailureError, StatementTimeoutError, withRetryAfter } from './errors.js'

/**
 * What a database error means, decided in one place: whether the connection is broken, whether
 * rerunning the unit of work may succeed, and the coded error to surface. errors.ts is the
 * catalogue of our errors; this file is the policy that picks one.
 */

/** Where the error came from: taking a connection, BEGIN (and its settings), a query, COMMIT. */
export type Phase = 'acquire' | 'begin' | 'query' | 'commit'

export interface Classified {
  /** The error to surface: one of ours with the database error as cause, or pg's own for a plain SQL error. */
  readonly error: Error
  /** A serialization failure or deadlock: PostgreSQL rolled back, and the whole unit of work may be rerun. */
  readonly retryable: boolean
  /** The connection cannot be trusted any more: destroy it, never return it to the pool. */
  readonly broken: boolean
}

/** What was known when the error came; each phase reads the fields named for it, which its caller gives. */
export interface Circumstances {
  /** 'query', 'commit': the first error that broke the connection before this one (its 'error' event, an earlier query). */
  readonly failure?: Error | null
  /** 'query', 'commit': pg still takes queries on the client (pg-internals.ts isQueryable). */
  readonly queryable?: boolean
  /** 'commit': the connection had broken before COMMIT was sent. */
  readonly brokenBeforeCommit?: boolean
  /** 'acquire': the acquire deadline, as a timeout reports it. */
  readonly acquireTimeoutMillis?: number
}

type DatabaseError = Error & { code?: string, severity?: string }

/** pg-pool reports its connectionTimeoutMillis this way (it has no error code); our own deadline says the same. */
export const PG_TIMEOUT_MESSAGE = 'timeout exceeded when trying to connect'
/** PgBouncer's error when no server connection became free in time; it then closes the client. */
const PGBOUNCER_WAIT_TIMEOUT = 'query_wait_timeout'
const NOTHING_KNOWN: Circumstances = Object.freeze({})

export function classify (cause: Error, phase: Phase, circumstances: Circumstances = NOTHING_KNOWN): Classified {
  switch (phase) {
    case 'acquire': return acquireFailure(cause, circumstances.acquireTimeoutMillis as number)
    case 'begin': return beginFailure(cause)
    case 'query': return queryFailure(cause, circumstances)
    case 'commit': return commitFailure(cause, circumstances)
  }
}

/** No connection was had: a full pool (the deadline passed) or a database that could not be reached. */
function acquireFailure (cause: Error, deadlineMillis: number): Classified {
  if (cause.message !== PG_TIMEOUT_MESSAGE) return notRetryable(new ConnectionFailedError(cause.message, { cause }), false)
  // Fastify's error handler sends the header; a load balancer or client can back off.
  const error = withRetryAfter(new AcquireTimeoutError(`${deadlineMillis} ms`, { cause }), Math.ceil(deadlineMillis / 1000))
  return notRetryable(error, false)
}

/**
 * BEGIN failed: the connection is in doubt, and no transaction was opened. PgBouncer in
 * transaction mode gives a server connection at BEGIN, not at connect: its query_wait_timeout
 * is the same overload as our acquire deadline.
 */
function beginFailure (cause: Error): Classified {
  if (cause.message !== PGBOUNCER_WAIT_TIMEOUT) return notRetryable(new ConnectionFailedError(cause.message, { cause }), true)
  return notRetryable(withRetryAfter(new AcquireTimeoutError('PgBouncer\'s query_wait_timeout', { cause }), 1), true)
}

/** A query failed: a lost connection (503), a serialization failure or deadlock (409), a statement timeout (503), or pg's error. */
function queryFailure (cause: Error, circumstances: Circumstances): Classified {
  const broke = breakage(cause, circumstances as Required<Circumstances>)
  // Report why the connection broke, not the echoes of it.
  if (broke !== null) return notRetryable(new ConnectionLostError(broke.message, { cause: broke }), true)
  return known(cause)
}

/**
 * COMMIT failed. On a connection still sound, the server refused it and rolled back. On one
 * broken before COMMIT was sent, or answered with an error (a FATAL), PostgreSQL rolled back too.
 * A connection lost with COMMIT on its way or its answer on the way back may have committed,
 * and nobody can say.
 */
function commitFailure (cause: DatabaseError, circumstances: Circumstances): Classified {
  const broke = breakage(cause, circumstances as Required<Circumstances>)
  if (broke === null) return commitRefused(cause, false)
  if ((circumstances.brokenBeforeCommit as boolean) || cause.code !== undefined) return commitRefused(broke, true)
  return notRetryable(new CommitOutcomeUnknownError(cause.message, { cause }), true)
}

function commitRefused (cause: Error, broken: boolean): Classified {
  const { error, retryable } = known(cause)
  return { error: error === cause ? new CommitFailedError(cause.message, { cause }) : error, retryable, broken }
}

/**
 * Database errors with a coded error of ours, the database error as cause: a serialization
 * failure or deadlock (409, retryable), a statement timeout (503); the rest as they are.
 */
function known (cause: DatabaseError): Classified {
  if (cause.code === '40001') return { error: new SerializationFailureError({ cause }), retryable: true, broken: false }
  if (cause.code === '40P01') return { error: new DeadlockError({ cause }), retryable: true, broken: false }
  // 57014 is also a query canceled by pg_cancel_backend(); only the timeout is ours to name.
  if (cause.code === '57014' && cause.message.includes('statement timeout')) return notRetryable(new StatementTimeoutError({ cause }), false)
  return notRetryable(cause, false)
}

function notRetryable (error: Error, broken: boolean): Classified {
  return { error, retryable: false, broken }
}

/** The error that broke the connection, an earlier one or this one; null while it is sound. */
function breakage (cause: Error, { failure, queryable }: Required<Circumstances>): Error | null {
  // Asked even when it broke earlier, as a dying connection's errors come in either order.
  const now = breaksConnection(cause, queryable) ? cause : null
  return failure ?? now
}

/**
 * True for errors after which the connection cannot be trusted: a FATAL or PANIC from the server,
 * a connection exception (class 08), or a driver error (no SQLSTATE) that left pg's client
 * unqueryable. A driver error on a healthy client (a value pg cannot serialize) is not one.
 */
function breaksConnection (error: DatabaseError, queryable: boolean): boolean {
  const { severity, code } = error
  if (code === undefined) return !queryable
  return code.startsWith('08') || severity === 'FATAL' || severity === 'PANIC'
}
