import pg from 'pg'

/*
 * Every read of a pg or pg-pool field that is not public API, with why it is needed. Checked
 * against pg 8.23.1 (lib/client.js, lib/query.js) and pg-pool 3.14.0 (index.js): on an upgrade,
 * check these names there first. The test suite covers each one through public behaviour.
 */

/** pg's private connection state, set from the server's ReadyForQuery and the socket's end. */
interface PgClientState {
  /** True once the last query's ReadyForQuery arrived. */
  readyForQuery: boolean
  /** The backend's transaction status from that ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' failed one. */
  _txStatus: string | null
  /** False once the connection ended or failed; pg-pool reads it the same way ("TODO: expose a proper interface"). */
  _queryable: boolean
}

/**
 * Whether pg can still send a query on the client. A driver error (no SQLSTATE) breaks the
 * connection exactly when it left the client unqueryable.
 */
export function isQueryable (client: pg.ClientBase): boolean {
  return (client as unknown as PgClientState)._queryable
}

/**
 * Whether a client can go back to the pool as it is: queryable, and not inside a transaction
 * by its last ReadyForQuery. A failed query rejects before its ReadyForQuery arrives; pg then
 * queues the next user's query until it does, which is fine, so only a known status counts.
 */
export function returnsClean (client: pg.ClientBase): boolean {
  const { readyForQuery, _txStatus: status, _queryable: queryable } = client as unknown as PgClientState
  return queryable && !(readyForQuery && status !== 'I')
}

/** Whether the client's last ReadyForQuery said it is inside a failed transaction (its COMMIT would only roll back). */
export function inFailedTransaction (client: pg.ClientBase): boolean {
  return (client as unknown as PgClientState)._txStatus === 'E'
}

/**
 * Takes a timed-out caller out of pg-pool's queue of waiters (`_pendingQueue`, items with the
 * caller's `callback`), as pg-pool's own connectionTimeoutMillis does, so that a connection
 * freed later goes to a caller still waiting. A pool without that queue (another pool class) is left alone.
 */
export function forgetWaiter (pool: pg.Pool, callback: unknown): void {
  const queue = (pool as unknown as { _pendingQueue?: Array<{ callback: unknown }> })._pendingQueue
  if (!Array.isArray(queue)) return
  const index = queue.findIndex((item) => item.callback === callback)
  if (index >= 0) queue.splice(index, 1)
}

/** Where a pg client connected, and the cancel key its server gave it (BackendKeyData), as pg keeps them. */
export interface CancelKey { host: string, port: number, processID: number, secretKey: number }

/** A client's cancel key: pg keeps `processID` and `secretKey` but declares neither. */
export function cancelKey (client: pg.ClientBase): CancelKey {
  const { host, port, processID, secretKey } = client as unknown as CancelKey
  return { host, port, processID, secretKey }
}

/**
 * The Client class a pool makes its clients with: pg-pool always sets `Client` (its option, or
 * pg's), so a user's pool is checked the way it connects, and fastify.db.kysely's control
 * connections (Kysely's in-flight abort strategies) are made the same way.
 */
export function poolClientClass (pool: pg.Pool): typeof pg.Client {
  return (pool as unknown as { Client: typeof pg.Client }).Client
}

/** Whether the client's connection has parsed the named statement `name` (pg's own record, which skips its Parse). */
export function isParsed (client: pg.ClientBase, name: string): boolean {
  return (client as unknown as { connection: PgConnection }).connection.parsedStatements[name] !== undefined
}

/** The parts of pg's Query that begin-with-query.ts overrides and calls; pg does not declare them. */
export interface PgQuery {
  /** Called once with the error or the result; pg calls it from handleError and handleReadyForQuery. */
  callback: ((error: Error | null, result?: pg.QueryResult) => void) | undefined
  /** The query's SQL: what pg's prepare() parses. */
  text: string
  /** A prepared statement's name: pg parses it once per connection, and records it as parsed at a ParseComplete. */
  name: string | undefined
  /** 'extended' makes pg write Parse/Bind/Execute/Sync even without parameters. */
  queryMode: string
  /** Writes the query's messages; one Sync follows. */
  prepare (connection: PgConnection): void
  handleDataRow (message: unknown): void
  handleCommandComplete (message: unknown, connection: PgConnection): void
  handleError (error: Error, connection: PgConnection): void
}

/** pg's Connection, as Query.prepare writes to it. */
export interface PgConnection {
  /** Names of the statements parsed on this connection, to their text (pg skips their Parse). */
  parsedStatements: Record<string, string>
  /** Names whose Parse was sent and not yet answered. */
  submittedNamedStatements: Record<string, string>
  parse (query: { text: string }): void
  bind (config: object): void
  execute (config: object): void
}

/** pg's Query class, with its private methods typed, to extend. */
export const PgQueryClass = pg.Query as unknown as new (text: string, values: readonly unknown[]) => PgQuery

/**
 * Ends the connects still under way in a pool that is ending: pg-pool's end() closes idle clients
 * and waits for the others, and a client whose connect the database never answers would hold the
 * pool open, and its socket, until its connect timeout. Each one's socket is destroyed, so its
 * connect fails now and pg-pool drops it. Reads pg-pool's `_clients` (every client it made, connected
 * or not) and pg's `_connecting` (true from connect() to the first ReadyForQuery).
 */
export function destroyConnecting (pool: pg.Pool): void {
  // Only the pools the plugin makes, always pg-pool's with pg's clients, come here.
  const clients = (pool as unknown as { _clients: Array<{ _connecting: boolean, connection: { stream: { destroy: () => void } } }> })._clients
  for (const client of clients) {
    if (client._connecting) client.connection.stream.destroy()
  }
}
