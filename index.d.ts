import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import type { FastifyError } from '@fastify/error'
import type { AccessMode, IsolationLevel, Kysely, KyselyPlugin, Transaction } from 'kysely'
import type { Pool, PoolConfig } from 'pg'

/**
 * Augment this interface to type `request.db` and `fastify.db` with your database:
 *
 * ```ts
 * declare module 'fastify-db-session' {
 *   interface DbSessionRegister { database: Database }
 * }
 * ```
 */
export interface DbSessionRegister {}

/** The database interface registered through {@link DbSessionRegister}, or `any`. */
export type RegisteredDatabase = DbSessionRegister extends { database: infer DB } ? DB : any

/** Transaction settings used for a request's transaction. */
export interface DbTransactionSettings {
  /** Sent with BEGIN; when unset, the server's `default_transaction_isolation` (read committed unless changed). */
  isolationLevel?: Exclude<IsolationLevel, 'snapshot'>
  /** `'read write'` or `'read only'`, sent with BEGIN; when unset, the server's `default_transaction_read_only`. */
  accessMode?: AccessMode
}

/** A context value; `null` and `undefined` set the empty string. */
export type DbContextValue = string | number | boolean | bigint | null | undefined

/** Options of `fastify.db.transaction()`. */
export interface DbTransactionOptions extends DbTransactionSettings {
  /** Transaction-local settings for this unit of work, e.g. `{ 'app.tenant_id': '42' }`. */
  context?: Record<string, DbContextValue>
}

/** `config.db` of a route: `false` gives the route no `request.db`. */
export type DbRouteConfig = false | DbTransactionSettings

export interface FastifyDbSessionOptions extends DbTransactionSettings {
  /** A PostgreSQL connection string; the plugin creates and owns the pool. */
  connectionString?: string
  /**
   * An existing `pg.Pool` (never ended by the plugin), or a `pg.PoolConfig` for a pool the plugin
   * creates and owns.
   */
  pool?: Pool | PoolConfig
  /** Most connections the owned pool opens. Default 10. */
  maxConnections?: number
  /**
   * How long a query waits for a connection before it fails with
   * `FST_DB_SESSION_ACQUIRE_TIMEOUT` (503). Default 5000 ms.
   */
  acquireTimeoutMillis?: number
  /** How long an idle connection stays open in the owned pool. Default 10000 ms; 0 keeps it. */
  idleTimeoutMillis?: number
  /** Connections older than this are closed once released. Default 1800 s; 0 means no limit. */
  maxLifetimeSeconds?: number
  /** How long `fastify.close()` waits for open transactions to roll back before destroying their connections. Default 5000 ms. */
  closeTimeoutMillis?: number
  /** Decides, synchronously, whether a request's transaction commits. Default: `reply.statusCode < 400`. */
  commitWhen?: (request: FastifyRequest, reply: FastifyReply) => boolean
  /** Kysely plugins applied to `request.db` and `fastify.db.kysely`. */
  plugins?: KyselyPlugin[]
  /**
   * Per-request database context: setting names (`namespace.name`) to functions of the request.
   * Each request's transaction starts with `set_config(name, value, true)` for every name, in the
   * same round trip as BEGIN, so row-level security policies can read them with
   * `current_setting(name, true)` and nothing survives into the next request on the connection.
   *
   * ```ts
   * context: { 'app.tenant_id': (request) => request.user?.tenantId }
   * ```
   */
  context?: Record<string, (request: FastifyRequest) => DbContextValue>
}

/** Pool gauges and lifetime counters; every field is a number. */
export interface DbPoolStats {
  /** Connections open (idle + active). */
  total: number
  /** Connections open and not checked out. */
  idle: number
  /** Connections checked out. */
  active: number
  /** Callers waiting for a connection. */
  waiting: number
  /** The pool's size limit. */
  max: number
  /** Connections checked out since start. */
  acquires: number
  /** Transactions committed. */
  commits: number
  /** Transactions rolled back. */
  rollbacks: number
  /** COMMITs that failed (the transaction was rolled back). */
  commitFailures: number
  /** Acquires that gave up after `acquireTimeoutMillis`. */
  acquireTimeouts: number
  /** Connections destroyed instead of returned because their state was in doubt. */
  destroyed: number
  /** Connections still checked out when `fastify.close()` had to destroy them. */
  leaks: number
}

/** The `fastify.db` decorator. */
export interface FastifyDbSession<DB = RegisteredDatabase> {
  /** A `Kysely` for work outside requests (jobs, scripts, migrations). */
  readonly kysely: Kysely<DB>
  /** The `pg.Pool` in use. */
  readonly pool: Pool
  /**
   * Runs `fn` in a transaction with the same guarantees as `request.db`: commit when `fn`
   * resolves, rollback when it throws, the connection always returned.
   */
  transaction<T>(fn: (trx: Transaction<DB>) => Promise<T>, options?: DbTransactionOptions): Promise<T>
  /** Pool gauges and counters. */
  stats(): DbPoolStats
}

declare module 'fastify' {
  interface FastifyInstance {
    db: FastifyDbSession
  }
  interface FastifyRequest {
    /** The request's transaction, opened on its first query. */
    readonly db: Transaction<RegisteredDatabase>
  }
  interface FastifyContextConfig {
    db?: DbRouteConfig
  }
}

/** Error classes, by code: match on `err.code`. */
export declare const errors: {
  readonly FST_DB_SESSION_INVALID_OPTION: FastifyErrorConstructor
  readonly FST_DB_SESSION_DISABLED: FastifyErrorConstructor
  readonly FST_DB_SESSION_TRANSACTION_FINISHED: FastifyErrorConstructor
  readonly FST_DB_SESSION_ACQUIRE_TIMEOUT: FastifyErrorConstructor
  readonly FST_DB_SESSION_CONNECTION_FAILED: FastifyErrorConstructor
  readonly FST_DB_SESSION_COMMIT_FAILED: FastifyErrorConstructor
  readonly FST_DB_SESSION_TRANSACTION_ABORTED: FastifyErrorConstructor
  readonly FST_DB_SESSION_SERIALIZATION_FAILURE: FastifyErrorConstructor
  readonly FST_DB_SESSION_DEADLOCK: FastifyErrorConstructor
  readonly FST_DB_SESSION_CLOSING: FastifyErrorConstructor
  readonly FST_DB_SESSION_STREAM_UNSUPPORTED: FastifyErrorConstructor
  readonly FST_DB_SESSION_INVALID_CONTEXT: FastifyErrorConstructor
  readonly FST_DB_SESSION_TOO_EARLY: FastifyErrorConstructor
}

type FastifyErrorConstructor = new (...args: any[]) => FastifyError

declare const fastifyDbSession: FastifyPluginAsync<FastifyDbSessionOptions>

export { fastifyDbSession }
export default fastifyDbSession
