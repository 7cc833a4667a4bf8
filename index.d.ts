// The package's types for ES modules: the declarations live in index.d.cts (what CommonJS users
// load), so an augmentation of DbSessionRegister from either module system reaches the same interface.
type FastifyDbSessionModule = typeof import('./index.cjs')

export type {
  DbContextValue,
  DbHistogram,
  DbPoolStats,
  DbReplicaChoice,
  DbReplicaStats,
  DbRouteConfig,
  DbSessionCommonOptions,
  DbSessionConnectionStringOptions,
  DbSessionExistingPoolOptions,
  DbSessionOwnedPoolOptions,
  DbSessionPoolConfigOptions,
  DbSessionError,
  DbSessionErrorClass,
  DbSessionRegister,
  DbTransactionOptions,
  DbTransactionSettings,
  DbUnitOfWork,
  FastifyDbSession,
  FastifyDbSessionOptions,
  OpenTelemetryMeterProvider,
  OpenTelemetryTracerProvider,
  PromClientRegistry,
  RegisteredDatabase
} from './index.cjs'

/** Error classes, by code: match on `err.code` (typed as each class's literal). */
export declare const errors: FastifyDbSessionModule['errors']

/** Several registrations' metrics in one exposition, for one scrape endpoint; their names must differ. */
export declare const combineMetrics: FastifyDbSessionModule['combineMetrics']

/** The plugin: `app.register(fastifyDbSession, options)`; also the default export. */
export declare const fastifyDbSession: FastifyDbSessionModule
export default fastifyDbSession
