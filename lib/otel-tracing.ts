import type * as OpenTelemetryApi from '@opentelemetry/api'
import type { Attributes, Context, Span, Tracer, TracerProvider } from '@opentelemetry/api'
import type { OpenTelemetryTracerProvider } from '../index.js'
import { InvalidOptionError } from './errors.js'
import type { Lease } from './lease.js'
import type { BeginSettings } from './transaction-settings.js'
import type { Outcome } from './unit-of-work.js'

/**
 * One OpenTelemetry span per unit of work (a request's, or a fastify.db.transaction attempt's),
 * a child of the span active when the unit is created. Its queries, COMMIT and ROLLBACK run in the
 * span's context, so the spans of @opentelemetry/instrumentation-pg nest under it. The only file
 * that loads @opentelemetry/api, with import() at registration: without the package, nothing.
 */

type Api = typeof OpenTelemetryApi

/** Where a registration's spans go: a tracer provider of the app's, the API's global one, or nowhere. */
export type TracerChoice = OpenTelemetryTracerProvider | 'global' | null

// The attributes of the semantic conventions, and ours (named as our metrics are).
const SYSTEM = 'db.system.name'
const NAMESPACE = 'db.namespace'
const POOL_NAME = 'db.client.connection.pool.name'
const SERVER_ADDRESS = 'server.address'
const SERVER_PORT = 'server.port'
const HTTP_ROUTE = 'http.route'
const ERROR_TYPE = 'error.type'
const STATUS_CODE = 'db.response.status_code'
const OWN = 'fastify_db_session.'
/** A SQLSTATE: what PostgreSQL answers an error with. */
const SQLSTATE = /^[0-9A-Z]{5}$/

let loading: Promise<Api | null> | undefined

/** @opentelemetry/api, imported once per process; null when it cannot be (the optional peer is not installed). */
function openTelemetryApi (): Promise<Api | null> {
  loading ??= import('@opentelemetry/api').then((api) => api, () => null)
  return loading
}

/**
 * The registration's tracing, or null: no tracing asked for (`openTelemetry: false`), or the
 * global provider asked for and @opentelemetry/api not installed.
 */
export async function unitTracing (choice: TracerChoice, poolName: string): Promise<UnitTracing | null> {
  if (choice === null) return null
  const api = await openTelemetryApi()
  if (api === null) {
    if (choice === 'global') return null
    throw new InvalidOptionError('openTelemetry.tracerProvider needs @opentelemetry/api, which could not be imported: install it beside the plugin (npm install @opentelemetry/api)')
  }
  // The global provider is a proxy: an SDK registered after the plugin still gets the spans.
  const provider = (choice === 'global' ? api.trace.getTracerProvider() : choice) as TracerProvider
  return new UnitTracing(api, provider.getTracer(TRACER_NAME), poolName, choice === 'global' ? idleProxy(api, provider) : null)
}

const TRACER_NAME = 'fastify-db-session'

/** What tells whether the global proxy has an SDK behind it yet: its delegate is still the no-op one. */
interface IdleProxy { proxy: OpenTelemetryApi.ProxyTracerProvider, noop: TracerProvider }

/** The global proxy (the API's global provider always is one) and the API's no-op provider, which a proxy without a delegate answers. */
function idleProxy (api: Api, provider: TracerProvider): IdleProxy {
  return { proxy: provider as OpenTelemetryApi.ProxyTracerProvider, noop: new api.ProxyTracerProvider().getDelegate() }
}

/** What names a unit of work in its span. */
export interface UnitLabel {
  /** `GET /notes/:id` for a request's unit, `fastify.db.transaction` or its label otherwise. */
  readonly route: string
  /** The route's URL pattern, for a request's unit. */
  readonly httpRoute?: string
}

/** Starts the spans of one registration's units of work. */
export class UnitTracing {
  readonly #api: Api
  readonly #tracer: Tracer
  readonly #poolName: string
  readonly #idle: IdleProxy | null

  constructor (api: Api, tracer: Tracer, poolName: string, idle: IdleProxy | null = null) {
    this.#api = api
    this.#tracer = tracer
    this.#poolName = poolName
    this.#idle = idle
  }

  /** A unit of work's span, a child of the active span; null when it would record nothing (no SDK, or not sampled). */
  start (label: UnitLabel, settings: BeginSettings): UnitSpan | null {
    // No SDK behind the global provider (yet): nothing to make, not even a span that records nothing.
    if (this.#idle !== null && this.#idle.proxy.getDelegate() === this.#idle.noop) return null
    const attributes: Attributes = { [SYSTEM]: 'postgresql', [POOL_NAME]: this.#poolName, [OWN + 'route']: label.route }
    if (label.httpRoute !== undefined) attributes[HTTP_ROUTE] = label.httpRoute
    if (settings.isolationLevel !== undefined) attributes[OWN + 'isolation_level'] = settings.isolationLevel
    if (settings.accessMode !== undefined) attributes[OWN + 'access_mode'] = settings.accessMode
    const { context, trace, SpanKind } = this.#api
    const parent = context.active()
    const span = this.#tracer.startSpan('transaction', { kind: SpanKind.CLIENT, attributes }, parent)
    return span.isRecording() ? new UnitSpan(this.#api, span, trace.setSpan(parent, span)) : null
  }
}

/** The span of one unit of work, from its creation to its COMMIT or ROLLBACK. */
export class UnitSpan {
  readonly #api: Api
  readonly #span: Span
  /** The context its statements run in: the span's own. */
  readonly #context: Context
  #queries = 0
  /** performance.now() when the unit asked for a connection. */
  #asked = 0

  constructor (api: Api, span: Span, context: Context) {
    this.#api = api
    this.#span = span
    this.#context = context
  }

  /** Runs one of the unit's queries (it opens the transaction when it is the first) in the span's context. */
  query<T> (run: () => T): T {
    this.#queries++
    return this.#api.context.with(this.#context, run)
  }

  /** Runs COMMIT or ROLLBACK in the span's context. */
  finish<T> (run: () => T): T {
    return this.#api.context.with(this.#context, run)
  }

  acquiring (): void {
    this.#asked = performance.now()
  }

  /** The connection came: the wait, and the database and server it is connected to. */
  acquired (lease: Lease): void {
    const { database, host, port } = lease.client
    const span = this.#span
    span.setAttribute(OWN + 'acquire_wait_seconds', (lease.acquiredAt - this.#asked) / 1000)
    span.setAttribute(SERVER_ADDRESS, host)
    span.setAttribute(SERVER_PORT, port)
    // pg always names the database (the user's name when the configuration does not).
    span.setAttribute(NAMESPACE, database as string)
    // The conventions' `{operation} {target}`: no SQL keyword covers BEGIN to COMMIT.
    span.updateName(`transaction ${database}`)
  }

  /**
   * Ends the span with how the unit ended. `cause` is what made its owner roll back (a thrown
   * error, the handler timeout), if known; with the outcome's own error it sets status ERROR.
   */
  end (outcome: Outcome, cause: unknown): Outcome {
    const span = this.#span
    span.setAttribute(OWN + 'queries', this.#queries)
    span.setAttribute(OWN + 'outcome', outcome.status)
    span.setAttribute(OWN + 'finish_reason', outcome.reason)
    if (outcome.retryable) span.setAttribute(OWN + 'retryable', true)
    const error = outcome.error ?? cause
    if (error !== null && error !== undefined) {
      const type = errorType(error)
      span.setAttribute(ERROR_TYPE, type)
      // PostgreSQL's own code, when the error is one of its or wraps one.
      const sqlState = [type, (error as { cause?: { code?: unknown } }).cause?.code].find((code) => typeof code === 'string' && SQLSTATE.test(code))
      if (sqlState !== undefined) span.setAttribute(STATUS_CODE, sqlState as string)
      span.setStatus({ code: this.#api.SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) })
    }
    span.end()
    return outcome
  }
}

/** error.type: the error's code (ours, Fastify's or PostgreSQL's), else its class, else the conventions' `_OTHER`. */
function errorType (error: unknown): string {
  const { code, name } = error as { code?: unknown, name?: unknown }
  return typeof code === 'string' ? code : typeof name === 'string' ? name : '_OTHER'
}
