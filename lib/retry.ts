import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import type { DbRouteConfig } from '../index.js'
import type { Telemetry } from './metrics.js'
import { LSN_HEADER } from './replica-options.js'
import type { Outcome, UnitOfWork } from './unit-of-work.js'

/**
 * The retries option: a unit of work that a serialization failure or deadlock ended (classify's
 * `retryable`, recorded by the unit of work itself) is rolled back and run again, whole, after a
 * short randomized exponential backoff. For a request, a handler wrapper installed at onRoute,
 * only on routes with retries: it commits before Fastify sends, so that a failed COMMIT can still
 * be retried; for fastify.db.transaction, repeat() around one attempt.
 */

export interface RetrySettings {
  /** The plugin's retries option: the default of routes and of fastify.db.transaction. */
  readonly retries: number
  /** The backoff's base: the n-th retry waits between half and all of delayMillis × 2^(n−1). */
  readonly delayMillis: number
}

/** The doubling stops here: the 7th and later retries wait up to 64 × the base delay. */
const MAX_DOUBLINGS = 6

/** One run of a unit of work: what it gave, how the unit ended, and what to throw (null: nothing). */
export interface Attempt<T> {
  readonly value: T
  readonly outcome: Outcome
  readonly failure: unknown
}

/** What the request wrapper needs of request-scope.ts. */
export interface RequestUnits {
  /** The unit of work of the request's current attempt; null when it has not touched request.db. */
  current (request: FastifyRequest): UnitOfWork | null
  /** Forgets the request's finished unit of work: the next request.db starts a fresh one. */
  discard (request: FastifyRequest): void
  /** The commitWhen option, checked; throws what it threw. */
  decide (request: FastifyRequest, reply: FastifyReply): boolean
}

type Handler = (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply) => unknown
type Send = (payload?: unknown) => FastifyReply

/** One request's retrying run: its handler and reply, and the number of the attempt under way. */
interface AttemptContext {
  readonly instance: FastifyInstance
  readonly handler: Handler
  readonly retries: number
  readonly units: RequestUnits
  readonly request: FastifyRequest
  readonly reply: FastifyReply
  /** reply.send as it was before the wrapper held it. */
  readonly send: Send
  number: number
}

/** How one run of the handler ended, as the wrapper saw it. */
type Ending =
  | { readonly kind: 'returned', readonly value: unknown }
  | { readonly kind: 'sent', readonly payload: unknown }
  | { readonly kind: 'threw', readonly error: unknown }
  | { readonly kind: 'timed out' }

const TIMED_OUT: Ending = { kind: 'timed out' }
/** Why a request is not run again when another response is on its way (the handler timeout's 503). */
const RESPONSE_TAKEN = 'the handler timed out, or its response has started'

/**
 * One registration's retries: the settings, the backoff, and close(), after which backoffs end at
 * once and nothing runs again (the last attempt's answer stands).
 */
export class Retrier {
  readonly settings: RetrySettings
  readonly #telemetry: Telemetry
  #stopped = false
  /** Wakes each backoff in progress. */
  readonly #sleepers = new Set<() => void>()
  /** Handlers this registration made: a route's options seen twice by onRoute are wrapped once. */
  readonly #wrappers = new WeakSet<object>()

  /** The route config key of this registration: `db`, or its decorator option. */
  readonly #key: string

  constructor (settings: RetrySettings, telemetry: Telemetry, key = 'db') {
    this.settings = settings
    this.#telemetry = telemetry
    this.#key = key
  }

  /** fastify.close() began: no unit of work runs again, and the backoffs in progress end now. */
  stop (): void {
    this.#stopped = true
    for (const wake of this.#sleepers) wake()
  }

  /** The randomized wait before retry number `retry` (1 for the first). */
  delayFor (retry: number): number {
    const ceiling = this.settings.delayMillis * 2 ** Math.min(retry - 1, MAX_DOUBLINGS)
    return Math.round(ceiling / 2 + Math.random() * ceiling / 2)
  }

  /** Waits `millis`, or less when close() begins or `response` closes (its client went away). */
  #sleep (millis: number, response?: NodeJS.EventEmitter): Promise<void> {
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(timer)
        this.#sleepers.delete(wake)
        response?.removeListener('close', wake)
        resolve()
      }
      const timer = setTimeout(wake, millis)
      this.#sleepers.add(wake)
      response?.once('close', wake)
    })
  }

  /** fastify.db.transaction's loop: runs `attempt` until it needs no retry, or may have no more. */
  async repeat<T> (retries: number, log: FastifyBaseLogger, attempt: () => Promise<Attempt<T>>): Promise<T> {
    let last = await attempt()
    for (let number = 1; last.outcome.retryable && number <= retries && !this.#stopped; number++) {
      const delayMillis = this.delayFor(number)
      log.debug({ attempt: number + 1, of: retries + 1, delayMillis, err: last.failure }, 'fastify-db-session: a serialization failure or deadlock ended a fastify.db.transaction; running its function again')
      await this.#sleep(delayMillis)
      if (this.#stopped) break
      this.#telemetry.retried()
      last = await attempt()
    }
    if (last.failure !== null) throw last.failure
    return last.value
  }

  /**
   * At onRoute: wraps the handler of a route whose retries (`config.db.retries`, or the
   * decorator's key, else the plugin's) are above 0. Other routes keep their handler, and pay nothing.
   */
  wrap (route: RouteOptions, units: RequestUnits): void {
    const db = (route.config as Record<string, DbRouteConfig | false | undefined> | undefined)?.[this.#key]
    const retries = db === false ? 0 : db?.retries ?? this.settings.retries
    if (retries === 0 || this.#wrappers.has(route.handler)) return
    route.handler = this.#retrying(route.handler as Handler, retries, units)
    this.#wrappers.add(route.handler)
  }

  #retrying (handler: Handler, retries: number, units: RequestUnits): Handler {
    const retrier = this
    // Not async: a handler run as it is keeps Fastify's sync-handler semantics exactly.
    return function retrying (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply): unknown {
      // A hook before the handler used request.db: rerunning the handler alone would lose its work.
      if (units.current(request) !== null) return handler.call(this, request, reply)
      return retrier.#run(this, handler, retries, units, request, reply)
    }
  }

  async #run (instance: FastifyInstance, handler: Handler, retries: number, units: RequestUnits, request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const send = reply.send as Send
    const initial = { status: reply.statusCode, headers: reply.getHeaders() }
    const attempt = { instance, handler, retries, units, request, reply, send, number: 1 }
    let answer = await this.#attempt(attempt)
    while (answer === null) {
      // The client sees only the last attempt: what this one set on the reply goes.
      reset(reply, initial)
      units.discard(request)
      this.#telemetry.retried()
      attempt.number++
      answer = await this.#attempt(attempt)
    }
    return answer()
  }

  /** Runs the handler once and finishes its unit of work: null to run it again, else what gives the answer. */
  async #attempt ({ instance, handler, retries, units, request, reply, send, number }: AttemptContext): Promise<(() => unknown) | null> {
    const ending = await runOnce(instance, handler, request, reply, send)
    // Fastify's handler timeout sent its 503, and rolled back (request-scope.ts, onError).
    if (ending.kind === 'timed out') return () => reply
    const work = units.current(request)
    // No database work, or a response the handler started itself (hijacked, written raw): as without retries.
    if (work === null || reply.sent || reply.raw.headersSent) return () => deliver(ending, reply, send)
    const { outcome, failure } = await settle(ending, work, units, request, reply)
    if (!outcome.retryable || number > retries) return () => finalize(ending, failure, reply, send)
    const delayMillis = this.delayFor(number)
    if (this.#refusal(request, reply) === null) {
      request.log.debug({ attempt: number + 1, of: retries + 1, delayMillis, err: failure ?? undefined }, 'fastify-db-session: a serialization failure or deadlock ended the request\'s transaction; running the handler again')
      await this.#sleep(delayMillis, reply.raw)
    }
    const refusal = this.#refusal(request, reply)
    if (refusal === null) return null
    request.log.debug({ attempt: number, reason: refusal }, 'fastify-db-session: not retrying the request')
    // A response already on its way (the handler timeout's 503) is left alone.
    if (refusal === RESPONSE_TAKEN) return () => reply
    return () => finalize(ending, failure, reply, send)
  }

  /** Why the request may not run again now; null when it may. */
  #refusal (request: FastifyRequest, reply: FastifyReply): string | null {
    if (this.#stopped) return 'the server is closing'
    const timedOut = (request.signal.reason as { code?: string } | undefined)?.code === 'FST_ERR_HANDLER_TIMEOUT'
    if (timedOut || reply.sent || reply.raw.headersSent) return RESPONSE_TAKEN
    if (reply.raw.destroyed) return 'the client went away'
    return null
  }
}

/**
 * Runs the handler once with reply.send held: what it sends is kept for the wrapper, which commits
 * before sending it. Fastify's handler timeout sends through it too, and goes through at once.
 */
function runOnce (instance: FastifyInstance, handler: Handler, request: FastifyRequest, reply: FastifyReply, send: Send): Promise<Ending> {
  return new Promise<Ending>((resolve) => {
    let ended = false
    const end = (ending: Ending): void => {
      if (ended) return
      ended = true
      reply.send = send as FastifyReply['send']
      resolve(ending)
    }
    reply.send = function held (payload?: unknown): FastifyReply {
      if (payload instanceof Error && (payload as { code?: string }).code === 'FST_ERR_HANDLER_TIMEOUT') {
        end(TIMED_OUT)
        return send.call(reply, payload)
      }
      end({ kind: 'sent', payload })
      return reply
    } as FastifyReply['send']
    let result: unknown
    try {
      result = handler.call(instance, request, reply)
    } catch (error) {
      end({ kind: 'threw', error })
      return
    }
    if (typeof (result as { then?: unknown } | null)?.then === 'function') {
      // Whichever comes first: a handler that returns `reply.send(x)` settles only once the response ends.
      (result as Promise<unknown>).then(
        (value) => { end({ kind: 'returned', value }) },
        (error) => {
          if (ended) request.log.error({ err: error }, 'fastify-db-session: a handler failed after its reply was taken')
          else end({ kind: 'threw', error })
        })
    } else if (result !== undefined || reply.sent || reply.raw.headersSent) {
      end({ kind: 'returned', value: result })
    }
    // Otherwise a handler that calls reply.send() later, as Fastify allows.
  })
}

/** The error the handler ended with: thrown, or returned or sent as its answer (Fastify's error path); null for an answer. */
function errorOf (ending: Ending): unknown {
  if (ending.kind === 'threw') return ending.error
  const answer = ending.kind === 'sent' ? ending.payload : (ending as { value: unknown }).value
  return answer instanceof Error ? answer : null
}

/** Finishes the attempt's unit of work: rolled back when it failed, else as commitWhen says, before anything is sent. */
async function settle (ending: Ending, work: UnitOfWork, units: RequestUnits, request: FastifyRequest, reply: FastifyReply): Promise<{ outcome: Outcome, failure: unknown }> {
  const error = errorOf(ending)
  if (error !== null) return { outcome: await work.finish(false, 'the request failed', error), failure: error }
  // Nobody would learn of a commit made for a client that is gone. A commitWhen that throws fails
  // the request, and onError rolls back.
  const commit = !reply.raw.destroyed && units.decide(request, reply)
  const outcome = await work.finish(commit, 'the response was sent')
  if (outcome.position !== null) reply.header(LSN_HEADER, outcome.position)
  return { outcome, failure: outcome.error }
}

/** The last attempt's answer: its error (thrown, or a failed COMMIT's), or what it returned or sent. */
function finalize (ending: Ending, failure: unknown, reply: FastifyReply, send: Send): unknown {
  if (failure !== null) throw failure
  return deliver(ending, reply, send)
}

/** Hands the handler's own ending to Fastify, as if there were no wrapper. */
function deliver (ending: Ending, reply: FastifyReply, send: Send): unknown {
  switch (ending.kind) {
    case 'threw': throw ending.error
    case 'returned': return ending.value
    default:
      send.call(reply, (ending as { payload: unknown }).payload)
      // Settles once the response has ended, and Fastify then sends nothing more.
      return reply
  }
}

/** Puts the reply's status and headers back as they were before the first attempt. */
function reset (reply: FastifyReply, initial: { status: number, headers: Record<string, unknown> }): void {
  reply.code(initial.status)
  for (const name of Object.keys(reply.getHeaders())) {
    if (!(name in initial.headers)) reply.removeHeader(name)
  }
  for (const [name, value] of Object.entries(initial.headers)) reply.header(name, value)
}
