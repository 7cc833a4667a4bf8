import createError from '@fastify/error'

// One class per failure, matched by users on `err.code`; messages say what to do about it.
export const InvalidOptionError = createError(
  'FST_DB_SESSION_INVALID_OPTION',
  'fastify-db-session: %s',
  500,
  TypeError
)

export const DbDisabledError = createError(
  'FST_DB_SESSION_DISABLED',
  'request.%s is disabled on route %s by `config: { %s: false }`; remove that setting to use the database there',
  500
)

export const TransactionFinishedError = createError(
  'FST_DB_SESSION_TRANSACTION_FINISHED',
  'This transaction has already finished (%s); a query after that would run outside it. Await every query before the handler returns',
  500
)

export const AcquireTimeoutError = createError(
  'FST_DB_SESSION_ACQUIRE_TIMEOUT',
  'No database connection became free within %s; the pool is exhausted (raise the pool size or acquireTimeoutMillis, or shorten transactions)',
  503
)

export const ConnectionFailedError = createError(
  'FST_DB_SESSION_CONNECTION_FAILED',
  'Could not open a database transaction: %s',
  503
)

export const ConnectionLostError = createError(
  'FST_DB_SESSION_CONNECTION_LOST',
  'The database connection was lost during the transaction, which PostgreSQL rolled back: %s',
  503
)

export const CommitFailedError = createError(
  'FST_DB_SESSION_COMMIT_FAILED',
  'COMMIT failed and the transaction was rolled back: %s',
  500
)

export const CommitOutcomeUnknownError = createError(
  'FST_DB_SESSION_COMMIT_OUTCOME_UNKNOWN',
  'The database connection was lost while COMMIT was in flight, so whether the transaction committed is unknown (%s); check before retrying work that must not run twice',
  500
)

export const TransactionAbortedError = createError(
  'FST_DB_SESSION_TRANSACTION_ABORTED',
  'A query in this transaction failed earlier and its error was caught, so PostgreSQL rolled back instead of committing',
  500
)

export const SerializationFailureError = createError(
  'FST_DB_SESSION_SERIALIZATION_FAILURE',
  'The transaction could not be serialized with concurrent transactions and was rolled back; retry the request',
  409
)

export const DeadlockError = createError(
  'FST_DB_SESSION_DEADLOCK',
  'The transaction was chosen as a deadlock victim and rolled back; retry the request',
  409
)

export const ClosingError = createError(
  'FST_DB_SESSION_CLOSING',
  'The server is shutting down and takes no new database work',
  503
)

export const StreamUnsupportedError = createError(
  'FST_DB_SESSION_STREAM_UNSUPPORTED',
  'stream() needs a cursor: register the plugin with `cursor` (pg-cursor\'s class: `import Cursor from \'pg-cursor\'`), or page with limit/offset or keyset instead',
  500
)

export const InvalidContextError = createError(
  'FST_DB_SESSION_INVALID_CONTEXT',
  "The context value for '%s' contains a NUL character, which PostgreSQL settings cannot hold",
  500
)

export const TooEarlyError = createError(
  'FST_DB_SESSION_TOO_EARLY',
  'request.%s was used in a hook that runs before fastify-db-session\'s own onRequest hook; register the plugin before that hook',
  500
)

export const DatabaseUnavailableError = createError(
  'FST_DB_SESSION_DATABASE_UNAVAILABLE',
  'The database is unreachable (%d connection attempts in a row failed); failing fast for the next %d s, then trying again',
  503
)

export const StartupFailedError = createError(
  'FST_DB_SESSION_STARTUP_FAILED',
  'Could not connect to PostgreSQL %s: %s. Check that it runs and that host, port and credentials are right',
  500
)

export const PingFailedError = createError(
  'FST_DB_SESSION_PING_FAILED',
  'The database did not answer a ping: %s',
  503
)

export const StatementTimeoutError = createError(
  'FST_DB_SESSION_STATEMENT_TIMEOUT',
  'A query ran longer than statementTimeoutMillis and was canceled; raise the limit for this route or make the query faster',
  503
)

export const HoldTimeoutError = createError(
  'FST_DB_SESSION_HOLD_TIMEOUT',
  'The transaction held its connection longer than leakTimeoutMillis (%d ms): it was rolled back and the connection destroyed',
  500
)

export const SessionStateError = createError(
  'FST_DB_SESSION_SESSION_STATE',
  "'%s' would change the connection's session, which outlives this transaction: the next request to take the pooled connection (behind PgBouncer in transaction mode, any client) would inherit it. Use SET LOCAL, set_config(name, value, true) or pg_advisory_xact_lock, or fastify.db.kysely for session work",
  500
)

export const ConnectionKilledError = createError(
  'FST_DB_SESSION_CONNECTION_KILLED',
  "An abort signal with inflightQueryAbortStrategy 'kill session' ended this transaction's connection: PostgreSQL rolled the transaction back",
  500
)

export const InvalidPositionError = createError(
  'FST_DB_SESSION_INVALID_POSITION',
  "The db-session-lsn header must be a WAL position as a response's db-session-lsn header gave it (like 0/16B3748); instead got '%s'",
  400
)

export const AutocommitUnsupportedError = createError(
  'FST_DB_SESSION_AUTOCOMMIT_UNSUPPORTED',
  '%s needs a transaction, and this unit of work runs with `autocommit: true` (each statement is its own transaction); use a route or transaction without autocommit',
  500
)

export const errors = {
  FST_DB_SESSION_INVALID_OPTION: InvalidOptionError,
  FST_DB_SESSION_DISABLED: DbDisabledError,
  FST_DB_SESSION_TRANSACTION_FINISHED: TransactionFinishedError,
  FST_DB_SESSION_ACQUIRE_TIMEOUT: AcquireTimeoutError,
  FST_DB_SESSION_CONNECTION_FAILED: ConnectionFailedError,
  FST_DB_SESSION_CONNECTION_LOST: ConnectionLostError,
  FST_DB_SESSION_COMMIT_FAILED: CommitFailedError,
  FST_DB_SESSION_COMMIT_OUTCOME_UNKNOWN: CommitOutcomeUnknownError,
  FST_DB_SESSION_TRANSACTION_ABORTED: TransactionAbortedError,
  FST_DB_SESSION_SERIALIZATION_FAILURE: SerializationFailureError,
  FST_DB_SESSION_DEADLOCK: DeadlockError,
  FST_DB_SESSION_CLOSING: ClosingError,
  FST_DB_SESSION_STREAM_UNSUPPORTED: StreamUnsupportedError,
  FST_DB_SESSION_INVALID_CONTEXT: InvalidContextError,
  FST_DB_SESSION_TOO_EARLY: TooEarlyError,
  FST_DB_SESSION_DATABASE_UNAVAILABLE: DatabaseUnavailableError,
  FST_DB_SESSION_STARTUP_FAILED: StartupFailedError,
  FST_DB_SESSION_PING_FAILED: PingFailedError,
  FST_DB_SESSION_STATEMENT_TIMEOUT: StatementTimeoutError,
  FST_DB_SESSION_HOLD_TIMEOUT: HoldTimeoutError,
  FST_DB_SESSION_SESSION_STATE: SessionStateError,
  FST_DB_SESSION_CONNECTION_KILLED: ConnectionKilledError,
  FST_DB_SESSION_INVALID_POSITION: InvalidPositionError,
  FST_DB_SESSION_AUTOCOMMIT_UNSUPPORTED: AutocommitUnsupportedError
} as const

/** Adds a Retry-After header, which Fastify's error handler sends with the error's status. */
export function withRetryAfter<E extends Error> (error: E, seconds: number): E {
  (error as { headers?: object }).headers = { 'retry-after': String(seconds) }
  return error
}
