import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import type { FastifyErrorConstructor } from '@fastify/error'
// kysely is an ES module only: a CommonJS declaration file names its types with resolution-mode 'import'.
import type { AccessMode, IsolationLevel, Kysely, KyselyPlugin, PostgresCursorConstructor, Transaction } from 'kysely' with { 'resolution-mode': 'import' }
import type { Pool, PoolConfig } from 'pg'

// The package's types, in the form official Fastify plugins use (`export =` a function merged
// with a namespace): CommonJS users load this file directly, and index.d.ts re-exports it for ES
// modules, so both see one set of declarations and one DbSessionRegister to augment.

declare module 'fastify' {
  interface FastifyInstance {
    db: fastifyDbSession.FastifyDbSession
  }
  interface FastifyRequest {
    /** The request's transaction, opened on its first query. */
    readonly db: Transaction<fastifyDbSession.RegisteredDatabase>
    /**
     * Runs `fn` once the request's transaction has committed, never otherwise: after COMMIT
     * succeeded and before the response is sent (each callback awaited, in registration order),
     * so a 2xx means they ran. A request that never opened a transaction runs them where it would
     * have committed (when `commitWhen` says commit). One that throws or rejects is logged
     * through `request.log` and counted in `stats().callbackErrors`; the others still run and
     * the response stands. Registered inside a savepoint that is rolled back, it is dropped.
     *
     * ```ts
     * app.post('/invitations', async (request) => {
     *   const invitation = await request.db.insertInto('invitations').values(body).returningAll().executeTakeFirstOrThrow()
     *   request.afterCommit(() => mailer.send(invitation.email, 'You are invited'))
     *   return invitation
     * })
     * ```
     */
    afterCommit(fn: () => unknown): void
    /**
     * Runs `fn` once the request's transaction ended without committing, on every path: a throw,
     * an error status, a failed COMMIT, a client hang-up, a handler timeout, a failed hijacked
     * reply, `fastify.close()`, `leakTimeoutMillis`. Never after a commit; neither this nor
     * `afterCommit` runs when the outcome is unknown (`FST_DB_SESSION_COMMIT_OUTCOME_UNKNOWN`).
     * Registered inside a savepoint, it runs when that savepoint is rolled back.
     *
     * ```ts
     * request.afterRollback(() => { uploads.delete(fileName) })
     * ```
     */
    afterRollback(fn: () => unknown): void
    /**
     * Runs `fn(trx)` inside a `SAVEPOINT` on the request's transaction (opening it first if
     * needed, in the same round trip). When `fn` resolves, the savepoint is released and its
     * result returned; when it throws, `ROLLBACK TO SAVEPOINT` runs and the error is rethrown,
     * with the request's transaction still usable. Savepoints nest (call it again inside `fn`);
     * do not run two of one request side by side.
     *
     * ```ts
     * const inserted = await request.savepoint((trx) => trx.insertInto('tags').values({ name }).execute())
     *   .then(() => true, () => false) // a duplicate is rolled back; the request carries on
     * ```
     */
    savepoint<T>(fn: (trx: Transaction<fastifyDbSession.RegisteredDatabase>) => Promise<T> | T): Promise<T>
  }
  interface FastifyContextConfig {
    db?: fastifyDbSession.DbRouteConfig
  }
}

type FastifyDbSessionPlugin = FastifyPluginAsync<fastifyDbSession.FastifyDbSessionOptions>

declare namespace fastifyDbSession {
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
    /**
     * `SET LOCAL statement_timeout` for the transaction: a query running longer is canceled and
     * fails with `FST_DB_SESSION_STATEMENT_TIMEOUT` (503). 0 turns it off; unset keeps the server's.
     */
    statementTimeoutMillis?: number
    /**
     * `SET LOCAL idle_in_transaction_session_timeout`: PostgreSQL ends the connection of a
     * transaction left idle this long (the request then fails and rolls back). 0 turns it off; unset keeps the server's.
     */
    idleInTransactionTimeoutMillis?: number
    /**
     * `true`: no BEGIN and no COMMIT; each query of the unit of work runs as its own implicit
     * transaction, with the unit's settings (the context, `application_name`, read only,
     * `statementTimeoutMillis`) sent in the same round trip as the query. Only with
     * `accessMode: 'read only'` and `isolationLevel` unset or `'read committed'` (anything else is
     * refused with `FST_DB_SESSION_INVALID_OPTION` at registration or route declaration). What
     * differs from a transaction: `now()` changes from query to query, a `SET LOCAL` or
     * `set_config(…, true)` sent by the handler ends with its statement, `pg_advisory_xact_lock`
     * is released when its statement ends, a failed query does not fail the rest, and `stream()`
     * and savepoints throw `FST_DB_SESSION_AUTOCOMMIT_UNSUPPORTED`. Default `false`.
     *
     * ```ts
     * app.get('/items', { config: { db: { accessMode: 'read only', autocommit: true } } }, handler)
     * ```
     */
    autocommit?: boolean
    /**
     * `true`: a read-only transaction below serializable sends its response first, then its
     * COMMIT (nothing can be lost at that COMMIT), then gives its connection back: one round trip
     * less before the client has its answer. The response still waits for the COMMIT where the
     * client could tell: a query of the unit failed or still runs, `afterCommit`/`afterRollback`
     * callbacks were registered, or a statement took an advisory transaction lock, a `LOCK` or a
     * `NOTIFY`. Until the COMMIT ends, `stats()` and `pg_stat_activity` still show the connection
     * in use. Default `false`.
     */
    respondBeforeCommit?: boolean
    /**
     * How many more times a unit of work that failed with a serialization failure (40001) or a
     * deadlock (40P01), in a query or at COMMIT, is rolled back and run again, whole, on a fresh
     * transaction, after a short randomized backoff (`retryDelayMillis`). An integer from 0 to 10;
     * default 0 (no retry: the failure answers 409).
     *
     * For a route (the plugin option, or `config.db.retries`), the handler runs again, while nothing
     * of the response has been sent; the client sees only the last attempt. For
     * `fastify.db.transaction`, the function runs again. Either must be safe to run again: keep side
     * effects outside the database out of it.
     *
     * ```ts
     * app.post('/transfer', { config: { db: { isolationLevel: 'serializable', retries: 3 } } }, handler)
     * await app.db.transaction(fn, { isolationLevel: 'serializable', retries: 3 })
     * ```
     */
    retries?: number
  }

  /** A context value; `null` and `undefined` set the empty string. */
  export type DbContextValue = string | number | boolean | bigint | null | undefined

  /**
   * The second argument of `fastify.db.transaction(fn)`'s `fn`: the unit of work's callbacks and
   * savepoints, with the meanings of `request.afterCommit`, `request.afterRollback` and
   * `request.savepoint` (a failing callback is logged through `fastify.log`).
   *
   * ```ts
   * await app.db.transaction(async (trx, unit) => {
   *   await trx.insertInto('jobs').values({ name: 'report' }).execute()
   *   unit.afterCommit(() => queue.publish('jobs'))
   * })
   * ```
   */
  export interface DbUnitOfWork<DB = RegisteredDatabase> {
    /** Runs `fn` after the transaction committed, before `transaction()` resolves. */
    afterCommit(fn: () => unknown): void
    /** Runs `fn` after the transaction ended without committing (or when a savepoint it was registered in is rolled back). */
    afterRollback(fn: () => unknown): void
    /** Runs `fn(trx)` inside a savepoint: released when it resolves, rolled back to when it throws (the error rethrown). */
    savepoint<T>(fn: (trx: Transaction<DB>) => Promise<T> | T): Promise<T>
  }

  /** Options of `fastify.db.transaction()`. */
  export interface DbTransactionOptions extends DbTransactionSettings, DbReplicaChoice {
    /**
     * For read only work on a replica: the commit position (a `db-session-lsn` value) it must see at
     * least; a replica serves it once replayed that far (within `replicaWaitMillis`), else the primary.
     */
    lsn?: string
    /** Transaction-local settings for this unit of work, e.g. `{ 'app.tenant_id': '42' }`. */
    context?: Record<string, DbContextValue>
    /**
     * What the transaction shows as `application_name` in `pg_stat_activity` while it runs (cut to
     * 63 printable ASCII characters), or `false` for none. Default `'fastify.db.transaction'`, or none
     * when the plugin's `applicationName` option is `false`.
     */
    label?: string | false
  }

  /**
   * `config.db` of a route: `false` gives the route no `request.db`; settings override the plugin's.
   * Checked when the route is declared: a bad value or an unknown key fails with `FST_DB_SESSION_INVALID_OPTION`.
   *
   * ```ts
   * app.get('/report', { config: { db: { isolationLevel: 'repeatable read', accessMode: 'read only' } } }, handler)
   * ```
   */
  export type DbRouteConfig = false | (DbTransactionSettings & DbReplicaChoice)

  /** Whether read only work may run on a replica (with the `replicas` option). */
  export interface DbReplicaChoice {
    /**
     * `false` keeps read only work on the primary (it must see the latest data, whatever the
     * position it carries). Default `true`: read only work runs on a replica when one serves.
     *
     * ```ts
     * app.get('/balance', { config: { db: { accessMode: 'read only', replica: false } } }, handler)
     * ```
     */
    replica?: boolean
  }

  /**
   * The plugin's options: `connectionString`, a `pg.PoolConfig` or an existing `pg.Pool`, with the
   * options every registration takes. What cannot work together does not compile: no connection
   * at all, a `connectionString` beside a `pg.Pool` or beside the config's own, sizing options for a `pg.Pool`.
   *
   * ```ts
   * await app.register(dbSession, { connectionString: 'postgres://app@localhost/app', maxConnections: 20 })
   * await app.register(dbSession, { pool: { host: 'db', database: 'app', max: 20 } })
   * await app.register(dbSession, { pool: existingPool, acquireTimeoutMillis: 2000 })
   * ```
   */
  export type FastifyDbSessionOptions = DbSessionConnectionStringOptions | DbSessionPoolConfigOptions | DbSessionExistingPoolOptions

  /** A pool the plugin creates and owns, from a connection string. */
  export interface DbSessionConnectionStringOptions extends DbSessionCommonOptions, DbSessionOwnedPoolOptions {
    /** A PostgreSQL connection string; the plugin creates and owns the pool. */
    connectionString: string
    /** More `pg.PoolConfig` settings for that pool (`ssl`, `application_name`, ...), without a connection string of their own. */
    pool?: PoolConfig & { connectionString?: never }
  }

  /** A pool the plugin creates and owns, from a `pg.PoolConfig` (its fields are checked at register time). */
  export interface DbSessionPoolConfigOptions extends DbSessionCommonOptions, DbSessionOwnedPoolOptions {
    connectionString?: never
    /** A `pg.PoolConfig` for a pool the plugin creates and owns. */
    pool: PoolConfig
  }

  /** An existing pool: yours to size and to end. */
  export interface DbSessionExistingPoolOptions extends DbSessionCommonOptions {
    connectionString?: never
    /**
     * An existing `pg.Pool` (never ended by the plugin; pg-pool's `connect(callback)` and pg's
     * JavaScript client, not `pg.native`). Size it on the pool itself.
     */
    pool: Pool
    maxConnections?: never
    idleTimeoutMillis?: never
    maxLifetimeSeconds?: never
    connectTimeoutMillis?: never
  }

  /** Sizing of a pool the plugin creates and owns; each may instead be set as its pg name in a `pg.PoolConfig`, never both. */
  export interface DbSessionOwnedPoolOptions {
    /** Most connections the owned pool opens (pg's `max`). Default 10. */
    maxConnections?: number
    /** How long an idle connection stays open in the owned pool. Default 10000 ms; 0 keeps it. */
    idleTimeoutMillis?: number
    /** Connections older than this are closed once released. Default 1800 s; 0 means no limit. */
    maxLifetimeSeconds?: number
    /**
     * How long the owned pool may take to make a new connection (connect, TLS, authentication)
     * before giving up on it: pg's connect timeout. Default: `acquireTimeoutMillis`, but at least
     * 5000 ms. A request waits no longer than `acquireTimeoutMillis` either way; a connection still
     * being made when that passes goes on and serves the next request. Not with a
     * `pg.PoolConfig` that sets `connectionTimeoutMillis` (pg-pool then bounds both with it).
     */
    connectTimeoutMillis?: number
  }

  /** The options every registration takes, however it gets its connections. */
  export interface DbSessionCommonOptions extends DbTransactionSettings {
    /**
     * How long a query waits for a connection before it fails with
     * `FST_DB_SESSION_ACQUIRE_TIMEOUT` (503). Default 5000 ms.
     */
    acquireTimeoutMillis?: number
    /** How long `fastify.close()` waits for open transactions to roll back before destroying their connections. Default 5000 ms. */
    closeTimeoutMillis?: number
    /** Decides, synchronously, whether a request's transaction commits. Default: `reply.statusCode < 400`. */
    commitWhen?: (request: FastifyRequest, reply: FastifyReply) => boolean
    /**
     * The base of the randomized exponential backoff before a retry (see `retries`): the n-th retry
     * waits a random time between half and all of `retryDelayMillis × 2^(n−1)`, the doubling
     * stopping at the 7th retry (× 64). An integer from 0 (retry at once) to 60000. Default 20 ms.
     */
    retryDelayMillis?: number
    /** Kysely plugins applied to `request.db` and `fastify.db.kysely`. */
    plugins?: KyselyPlugin[]
    /**
     * pg-cursor's class, for Kysely's `stream()` on `request.db`, `fastify.db.transaction` and
     * `fastify.db.kysely` (Kysely's PostgresDialect `cursor`). Without it `stream()` throws
     * `FST_DB_SESSION_STREAM_UNSUPPORTED` (on `fastify.db.kysely`, Kysely's own error).
     *
     * ```ts
     * import Cursor from 'pg-cursor'
     * await app.register(dbSession, { connectionString, cursor: Cursor })
     * ```
     */
    cursor?: PostgresCursorConstructor
    /**
     * Per-request database context: setting names (`namespace.name`) to functions of the request.
     * Each request's transaction starts with `set_config(name, value, true)` for every name, sent
     * with BEGIN and the first query in one round trip, so row-level security policies can read them with
     * `current_setting(name, true)` and nothing survives into the next request on the connection.
     *
     * ```ts
     * context: { 'app.tenant_id': (request) => request.user?.tenantId }
     * ```
     */
    context?: Record<string, (request: FastifyRequest) => DbContextValue>
    /**
     * The name of this registration's decorators and route setting: `request.<decorator>`,
     * `fastify.<decorator>` and `config.<decorator>` on routes. Default `'db'`. Give a second
     * registration (another database) its own; each has its own pool, transactions, hooks, stats
     * and metrics. A JavaScript identifier, not a property Fastify or another plugin already has
     * on the instance, its requests or its replies, and not a decorator of another registration in
     * the same scope or a parent scope: those fail registration with `FST_DB_SESSION_INVALID_OPTION`.
     * Type it by augmenting Fastify (`DbSessionRegister` types only the default `db`):
     *
     * ```ts
     * await app.register(dbSession, { connectionString: analyticsUrl, decorator: 'analytics' })
     *
     * declare module 'fastify' {
     *   interface FastifyRequest { readonly analytics: Transaction<AnalyticsDatabase> }
     *   interface FastifyInstance { analytics: FastifyDbSession<AnalyticsDatabase> }
     *   interface FastifyContextConfig { analytics?: DbRouteConfig }
     * }
     * ```
     */
    decorator?: string
    /**
     * What each unit of work shows as `application_name` in `pg_stat_activity` while it runs, set
     * transaction-locally (`SET LOCAL`) in the round trip that carries BEGIN: nothing stays on the
     * connection after it. Cut to PostgreSQL's 63 bytes, other than printable ASCII replaced by `?`.
     * Default (or `true`): the route and the request id, like `GET /notes/:id req-1`; a function:
     * its name; `false` leaves `application_name` alone (and saves its cost: about 15% of a
     * one-select route's throughput on loopback and 25 µs of its first round trip, see the
     * README's Performance section).
     *
     * ```ts
     * applicationName: (request) => `notes ${request.routeOptions.url} ${request.id}`
     * ```
     */
    applicationName?: ((request: FastifyRequest) => string) | boolean
    /**
     * Sends the queries of `request.db` and `fastify.db.transaction` that have parameters as named
     * prepared statements: PostgreSQL parses and plans each text once per connection instead of at
     * every run (about 25 µs less per query on loopback, see the README's Performance section).
     * `true` prepares up to 100 distinct texts per registration, `{ max }` up to `max`; texts past
     * that run unnamed. Default `false`. Needs connections that keep their statements: a direct
     * connection, PgBouncer in session mode, or PgBouncer 1.21 or later with
     * `max_prepared_statements` in transaction mode (earlier PgBouncers fail such queries).
     */
    preparedStatements?: boolean | { max?: number }
    /**
     * The `pool` label of `metrics()`, to tell several registrations apart. Default `'default'`
     * for the decorator `'db'`, otherwise the `decorator` option.
     */
    name?: string
    /** Serves `metrics()` on this GET path, e.g. `'/metrics'`. Default (or `false`): no route. */
    metricsRoute?: string | false
    /**
     * Logs a warning (once, with route, request id, age and where the first query was issued) for a
     * transaction that holds its connection longer than this, and counts it in `leaks`. Default 0 (off).
     */
    leakDetectionMillis?: number
    /**
     * Rolls back a transaction that holds its connection this long: its running statement is
     * canceled (with the connection's own cancel key) and the connection destroyed; the request fails
     * with `FST_DB_SESSION_HOLD_TIMEOUT`. Default 0 (off).
     */
    leakTimeoutMillis?: number
    /**
     * Fails acquires at once with `FST_DB_SESSION_DATABASE_UNAVAILABLE` (503) after
     * `failureThreshold` connection failures in a row, for `coolDownMillis`, then lets one probe
     * through. `true` uses `{ failureThreshold: 5, coolDownMillis: 5000 }`. Default `false`.
     */
    circuitBreaker?: boolean | { failureThreshold?: number, coolDownMillis?: number }
    /**
     * Connects once at register time, retrying `retries` times with a delay that starts at
     * `delayMillis` and doubles; registration then fails with `FST_DB_SESSION_STARTUP_FAILED`.
     * Default `true`: `{ retries: 4, delayMillis: 250 }`. `false` skips the check.
     */
    startupCheck?: boolean | { retries?: number, delayMillis?: number }
    /**
     * A prom-client `Registry` that reports this registration's metrics too: the same names, types,
     * help text and `pool` label as `metrics()`, read at each scrape. Several registrations may share a
     * registry (each with its own `name`); `fastify.close()` takes the pool's samples out again.
     * prom-client is an optional peer dependency, never imported by the plugin.
     *
     * ```ts
     * import { register } from 'prom-client'
     * await app.register(dbSession, { connectionString, promClientRegistry: register })
     * app.get('/metrics', async (request, reply) => reply.type(register.contentType).send(await register.metrics()))
     * ```
     */
    promClientRegistry?: PromClientRegistry
    /**
     * OpenTelemetry. Traces: one span per unit of work (kind CLIENT, named `transaction <database>`),
     * a child of the span active when `request.db` is first used (or `fastify.db.transaction` is
     * called), with the unit's queries, COMMIT and ROLLBACK run in its context (so the spans of
     * `@opentelemetry/instrumentation-pg` nest under it). They go to `tracerProvider` when given;
     * otherwise to the global tracer provider of `@opentelemetry/api` (registered by the app's SDK)
     * when that package is installed: no option needed, and nothing loaded without it.
     *
     * Metrics: the pool's figures through `meterProvider` (meter `fastify-db-session`):
     * `db.client.connection.*` of the semantic conventions and `fastify_db_session.*` for the rest.
     * Read at each collection, except the wait, use and create time histograms. Without
     * `meterProvider` no metrics are reported.
     *
     * `false` turns both off: nothing is imported, nothing reported.
     *
     * ```ts
     * import { metrics, trace } from '@opentelemetry/api'
     * await app.register(dbSession, {
     *   connectionString,
     *   openTelemetry: { meterProvider: metrics.getMeterProvider(), tracerProvider: trace.getTracerProvider() }
     * })
     * ```
     */
    openTelemetry?: false
      | { meterProvider: OpenTelemetryMeterProvider, tracerProvider?: OpenTelemetryTracerProvider }
      | { meterProvider?: OpenTelemetryMeterProvider, tracerProvider: OpenTelemetryTracerProvider }
    /**
     * Read replicas (hot standbys): connection strings, `pg.PoolConfig`s or `pg.Pool`s. A unit of work
     * whose access mode resolves to `'read only'` runs on a serving replica (in turn); everything
     * else on the primary. The plugin ends only the pools it creates, which get `maxConnections`,
     * `idleTimeoutMillis`, `maxLifetimeSeconds`, `acquireTimeoutMillis` and `connectTimeoutMillis` unless their config sets them.
     * A write that commits on the primary sends its commit position in the `db-session-lsn`
     * response header; a request that sends it back reads from a replica only once that replica
     * has replayed it (see `replicaWaitMillis`).
     *
     * ```ts
     * await app.register(dbSession, {
     *   connectionString: process.env.DATABASE_URL,
     *   replicas: [process.env.DATABASE_REPLICA_URL],
     *   accessMode: 'read only' // reads by default; routes that write say accessMode: 'read write'
     * })
     * ```
     */
    replicas?: Array<string | PoolConfig | Pool>
    /**
     * How long a read that carries a commit position waits for a replica to replay it before the
     * primary serves it instead. Default 100 ms; 0 never waits.
     */
    replicaWaitMillis?: number
    /**
     * A replica whose replay lags more than this (the age of its last replayed commit while WAL waits
     * to be replayed) is left out until it catches up; reads go to the other replicas or the primary. Default 5000 ms.
     */
    maxReplicaLagMillis?: number
    /** How often each replica's health, lag and replay position are read (never per request). Default 1000 ms, at least 10. */
    replicaCheckMillis?: number
    /**
     * Where a request's read-your-writes position comes from. Default: the `db-session-lsn`
     * request header. Return `undefined` for none; a malformed value fails the read with
     * `FST_DB_SESSION_INVALID_POSITION` (400).
     *
     * ```ts
     * lsnFrom: (request) => request.cookies['db-session-lsn']
     * ```
     */
    lsnFrom?: (request: FastifyRequest) => string | undefined
  }

  /**
   * What the plugin uses of a prom-client `Registry` (prom-client's `Registry` and its global
   * `register` fit); declared here so that the types need no prom-client installed.
   */
  export interface PromClientRegistry {
    registerMetric (metric: any): void
    getSingleMetric (name: string): unknown
    removeSingleMetric (name: string): void
  }

  /**
   * An OpenTelemetry `MeterProvider` (from `@opentelemetry/api` or `@opentelemetry/sdk-metrics`);
   * declared here so that the types need no OpenTelemetry package installed.
   */
  export interface OpenTelemetryMeterProvider {
    getMeter (name: string, version?: string, options?: any): unknown
  }

  /**
   * An OpenTelemetry `TracerProvider` (from `@opentelemetry/api`, `@opentelemetry/sdk-trace-base`
   * or `@opentelemetry/sdk-trace-node`); declared here so that the types need no OpenTelemetry
   * package installed.
   *
   * ```ts
   * import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node'
   * const tracerProvider = new NodeTracerProvider()
   * await app.register(dbSession, { connectionString, openTelemetry: { tracerProvider } })
   * ```
   */
  export interface OpenTelemetryTracerProvider {
    getTracer (name: string, version?: string, options?: any): unknown
  }

  /** A histogram of durations in seconds, with cumulative buckets as Prometheus defines them. */
  export interface DbHistogram {
    /** Observations made. */
    count: number
    /** Their sum, in seconds. */
    sum: number
    /** How many observations were at most `le` seconds; the `+Inf` bucket is `count`. */
    buckets: Array<{ le: number, count: number }>
  }

  /** Pool gauges, lifetime counters and histograms. */
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
    /** Transactions held past `leakDetectionMillis`/`leakTimeoutMillis`, and connections still checked out when `fastify.close()` had to destroy them. */
    leaks: number
    /** Transactions rolled back because the client went away or the socket timed out. */
    aborts: number
    /** Units of work run again after a serialization failure or deadlock (the `retries` option). */
    retries: number
    /** Errors reported by idle pooled connections (the pool dropped them). */
    idleErrors: number
    /** Connections the pool opened. */
    connectionsCreated: number
    /** Connections the pool closed (idle timeout, lifetime, destroyed, errors). */
    connectionsRemoved: number
    /** True while the circuit breaker fails acquires fast. */
    circuitOpen: boolean
    /** Acquires refused at once by the open circuit breaker. */
    circuitRejections: number
    /** `afterCommit` and `afterRollback` callbacks that threw or rejected (each was logged; the others still ran). */
    callbackErrors: number
    /** Time from asking for a connection to having it (successful acquires). */
    acquireWaitSeconds: DbHistogram
    /** Time each connection stayed checked out. */
    holdSeconds: DbHistogram
    /** `'primary'`, or `'replica'` for an entry of `replicas`. */
    role: 'primary' | 'replica'
    /** Read only units of work served by the replicas (on the primary's stats: by all of them; on a replica's: by it). */
    replicaReads: number
    /**
     * Read only units of work the primary served although replicas are configured, by why: every
     * replica `down`, the serving ones lagging (`lag`), none replayed the request's position within
     * `replicaWaitMillis` (`waitTimedOut`), or the position is ahead of the primary's (`ahead`).
     */
    replicaFallbacks: { down: number, lag: number, waitTimedOut: number, ahead: number }
    /** Time reads waited for a replica to replay their position (whether one did or not). */
    replicaWaitSeconds: DbHistogram
    /** Each replica's stats (the primary's only; empty without the `replicas` option). */
    replicas: DbReplicaStats[]
  }

  /** One replica's pool, counters and health, as last checked. */
  export interface DbReplicaStats extends DbPoolStats {
    role: 'replica'
    /** Its `pool` label: `<name>-replica-<n>`, n counting from 1 in the order of the `replicas` option. */
    name: string
    /** False while its checks or connects fail. */
    up: boolean
    /** Why reads do not go to it now, or null when it serves. */
    leftOut: 'down' | 'lag' | null
    /** Its replay lag at the last check, in milliseconds; null while down. */
    lagMillis: number | null
    /** How far it had replayed at the last check (`X/Y`); null while down. */
    lsn: string | null
  }

  /** The `fastify.db` decorator (`fastify.<decorator>` for a registration with another `decorator`). */
  export interface FastifyDbSession<DB = RegisteredDatabase> {
    /** A `Kysely` for work outside requests (jobs, scripts, migrations). */
    readonly kysely: Kysely<DB>
    /** The `pg.Pool` in use. */
    readonly pool: Pool
    /**
     * Runs `fn` in a transaction with the same guarantees as `request.db`: commit when `fn`
     * resolves, rollback when it throws, the connection always returned. `unit` registers
     * callbacks and opens savepoints; `transaction()` resolves after the afterCommit callbacks ran.
     *
     * ```ts
     * const id = await app.db.transaction(async (trx, unit) => {
     *   const row = await trx.insertInto('orders').values(order).returning('id').executeTakeFirstOrThrow()
     *   unit.afterCommit(() => events.emit('order', row.id))
     *   return row.id
     * }, { isolationLevel: 'serializable' })
     * ```
     */
    transaction<T>(fn: (trx: Transaction<DB>, unit: DbUnitOfWork<DB>) => Promise<T>, options?: DbTransactionOptions): Promise<T>
    /**
     * `request.afterCommit(fn)` for this registration's unit of work on `request`.
     *
     * ```ts
     * app.db.afterCommit(request, () => cache.delete(key))
     * ```
     */
    afterCommit(request: FastifyRequest, fn: () => unknown): void
    /** `request.afterRollback(fn)` for this registration's unit of work on `request`. */
    afterRollback(request: FastifyRequest, fn: () => unknown): void
    /** `request.savepoint(fn)` for this registration's unit of work on `request`. */
    savepoint<T>(request: FastifyRequest, fn: (trx: Transaction<DB>) => Promise<T> | T): Promise<T>
    /** The `name` option: the `pool` label of the metrics. */
    readonly name: string
    /** Pool gauges, counters and histograms. */
    stats(): DbPoolStats
    /** `stats()` in Prometheus' text exposition format (0.0.4), labelled with `pool`. */
    metrics(): string
    /**
     * Runs `SELECT 1` on a pooled connection; resolves to the round trip in milliseconds, or
     * rejects with `FST_DB_SESSION_PING_FAILED` (503) after `timeoutMillis` (default 2000).
     */
    ping(options?: { timeoutMillis?: number }): Promise<number>
  }

  /** Several registrations' metrics in one exposition, for one scrape endpoint; their names must differ. */
  export function combineMetrics (...dbs: Array<Pick<FastifyDbSession<any>, 'name' | 'stats'>>): string

  /**
   * An error class of the plugin (built with `@fastify/error`): its instances' `code` and
   * `statusCode` are typed as literals, so `err.code === 'FST_DB_SESSION_ACQUIRE_TIMEOUT'` and
   * `err instanceof errors.FST_DB_SESSION_ACQUIRE_TIMEOUT` narrow.
   */
  export type DbSessionErrorClass<Code extends string, Status extends number, Base extends Error = Error> =
    FastifyErrorConstructor<{ code: Code, statusCode: Status } & Base>

  /**
   * Error classes, by code: match on `err.code`. `FST_DB_SESSION_INVALID_OPTION` extends `TypeError`.
   *
   * ```ts
   * app.setErrorHandler((err, request, reply) => {
   *   if (err instanceof errors.FST_DB_SESSION_ACQUIRE_TIMEOUT) {
   *     // err.code is 'FST_DB_SESSION_ACQUIRE_TIMEOUT', err.statusCode is 503
   *   }
   *   reply.send(err)
   * })
   * ```
   */
  export const errors: {
    readonly FST_DB_SESSION_INVALID_OPTION: DbSessionErrorClass<'FST_DB_SESSION_INVALID_OPTION', 500, TypeError>
    readonly FST_DB_SESSION_DISABLED: DbSessionErrorClass<'FST_DB_SESSION_DISABLED', 500>
    readonly FST_DB_SESSION_TRANSACTION_FINISHED: DbSessionErrorClass<'FST_DB_SESSION_TRANSACTION_FINISHED', 500>
    readonly FST_DB_SESSION_ACQUIRE_TIMEOUT: DbSessionErrorClass<'FST_DB_SESSION_ACQUIRE_TIMEOUT', 503>
    readonly FST_DB_SESSION_CONNECTION_FAILED: DbSessionErrorClass<'FST_DB_SESSION_CONNECTION_FAILED', 503>
    readonly FST_DB_SESSION_CONNECTION_LOST: DbSessionErrorClass<'FST_DB_SESSION_CONNECTION_LOST', 503>
    readonly FST_DB_SESSION_COMMIT_FAILED: DbSessionErrorClass<'FST_DB_SESSION_COMMIT_FAILED', 500>
    readonly FST_DB_SESSION_COMMIT_OUTCOME_UNKNOWN: DbSessionErrorClass<'FST_DB_SESSION_COMMIT_OUTCOME_UNKNOWN', 500>
    readonly FST_DB_SESSION_TRANSACTION_ABORTED: DbSessionErrorClass<'FST_DB_SESSION_TRANSACTION_ABORTED', 500>
    readonly FST_DB_SESSION_SERIALIZATION_FAILURE: DbSessionErrorClass<'FST_DB_SESSION_SERIALIZATION_FAILURE', 409>
    readonly FST_DB_SESSION_DEADLOCK: DbSessionErrorClass<'FST_DB_SESSION_DEADLOCK', 409>
    readonly FST_DB_SESSION_CLOSING: DbSessionErrorClass<'FST_DB_SESSION_CLOSING', 503>
    readonly FST_DB_SESSION_STREAM_UNSUPPORTED: DbSessionErrorClass<'FST_DB_SESSION_STREAM_UNSUPPORTED', 500>
    readonly FST_DB_SESSION_INVALID_CONTEXT: DbSessionErrorClass<'FST_DB_SESSION_INVALID_CONTEXT', 500>
    readonly FST_DB_SESSION_TOO_EARLY: DbSessionErrorClass<'FST_DB_SESSION_TOO_EARLY', 500>
    readonly FST_DB_SESSION_DATABASE_UNAVAILABLE: DbSessionErrorClass<'FST_DB_SESSION_DATABASE_UNAVAILABLE', 503>
    readonly FST_DB_SESSION_STARTUP_FAILED: DbSessionErrorClass<'FST_DB_SESSION_STARTUP_FAILED', 500>
    readonly FST_DB_SESSION_PING_FAILED: DbSessionErrorClass<'FST_DB_SESSION_PING_FAILED', 503>
    readonly FST_DB_SESSION_STATEMENT_TIMEOUT: DbSessionErrorClass<'FST_DB_SESSION_STATEMENT_TIMEOUT', 503>
    readonly FST_DB_SESSION_HOLD_TIMEOUT: DbSessionErrorClass<'FST_DB_SESSION_HOLD_TIMEOUT', 500>
    readonly FST_DB_SESSION_SESSION_STATE: DbSessionErrorClass<'FST_DB_SESSION_SESSION_STATE', 500>
    readonly FST_DB_SESSION_CONNECTION_KILLED: DbSessionErrorClass<'FST_DB_SESSION_CONNECTION_KILLED', 500>
    readonly FST_DB_SESSION_INVALID_POSITION: DbSessionErrorClass<'FST_DB_SESSION_INVALID_POSITION', 400>
    readonly FST_DB_SESSION_AUTOCOMMIT_UNSUPPORTED: DbSessionErrorClass<'FST_DB_SESSION_AUTOCOMMIT_UNSUPPORTED', 500>
  }

  /**
   * Any error of the plugin: comparing `code` narrows to one class's instances.
   *
   * ```ts
   * function retryable (err: DbSessionError): boolean {
   *   return err.code === 'FST_DB_SESSION_SERIALIZATION_FAILURE' || err.code === 'FST_DB_SESSION_DEADLOCK'
   * }
   * ```
   */
  export type DbSessionError = InstanceType<(typeof errors)[keyof typeof errors]>

  /** The plugin itself, as a named export (also the default export and `module.exports`). */
  export const fastifyDbSession: FastifyDbSessionPlugin & {
    readonly errors: typeof errors
    readonly combineMetrics: typeof combineMetrics
  }
  export { fastifyDbSession as default }
}

/** The plugin: `app.register(fastifyDbSession, options)`. */
declare function fastifyDbSession (...params: Parameters<FastifyDbSessionPlugin>): ReturnType<FastifyDbSessionPlugin>
export = fastifyDbSession
