import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Transaction } from 'kysely'
import { ignore } from './callbacks.js'
import { checkCallback } from './commit-hooks.js'
import type { HookCallback } from './commit-hooks.js'
import { DbDisabledError, InvalidOptionError, TooEarlyError } from './errors.js'
import { WorkExecutor } from './kysely-executor.js'
import type { KyselyRuntime } from './kysely-executor.js'
import type { Retrier, RequestUnits } from './retry.js'
import { LSN_HEADER } from './replica-options.js'
import { placementFor } from './replica-router.js'
import type { routeSettingsResolver } from './transaction-settings.js'
import { UnitOfWork } from './unit-of-work.js'
import type { WorkRuntime } from './unit-of-work.js'

type CommitWhen = (request: FastifyRequest, reply: FastifyReply) => boolean

/** A request's afterCommit, afterRollback and savepoint, by request: what request.* and fastify.db.* call. */
export interface RequestCallbacks {
  afterCommit (request: FastifyRequest, fn: HookCallback): void
  afterRollback (request: FastifyRequest, fn: HookCallback): void
  savepoint<T> (request: FastifyRequest, fn: (trx: Transaction<any>) => Promise<T> | T): Promise<T>
}

/**
 * `request.<decorator>` (`request.db` by default) and what finishes its transaction on every way
 * a request can end: onSend (before the response leaves), onError (a thrown error), and the
 * response's close, which is all that happens for a client hang-up, a socket timeout, an HTTP/2
 * stream reset or a hijacked reply.
 */
export function installRequestScope (
  fastify: FastifyInstance,
  runtime: WorkRuntime & KyselyRuntime,
  settings: ReturnType<typeof routeSettingsResolver>,
  commitWhen: CommitWhen,
  contextFor: ((request: FastifyRequest) => string) | null,
  retrier: Retrier,
  decorator: string
): RequestCallbacks {
  // The request's private state, under symbols of this registration's own: a second
  // registration in the same app keeps its own unit of work on the same request.
  const kSession = Symbol(`fastify-db-session.${decorator}.session`)
  const kReply = Symbol(`fastify-db-session.${decorator}.reply`)
  // kSession: null until request.db is first used; undefined once a retry discarded a session.
  type SessionRequest = FastifyRequest & { [kSession]: WorkExecutor | null | undefined, [kReply]: FastifyReply | null }

  function startSession (request: SessionRequest): WorkExecutor {
    const { config } = request.routeOptions
    const beginSettings = settings.forConfig(config)
    if (beginSettings === null) throw new DbDisabledError(decorator, `${config.method} ${config.url}`, decorator)
    const reply = request[kReply]
    if (reply === null) throw new TooEarlyError(decorator)
    const owner = runtime.leakWatch === null ? null : () => ({ log: request.log, route: `${config.method} ${config.url}` })
    const span = runtime.tracing?.start({ route: `${config.method} ${config.url}`, httpRoute: config.url }, beginSettings) ?? null
    const placement = placementFor(runtime.router, beginSettings, request)
    const session = new WorkExecutor(runtime, new UnitOfWork(runtime, beginSettings, contextFor === null ? null : () => contextFor(request), owner, span, placement))
    // undefined, not null: a retry discarded an earlier session, whose listener serves this one too.
    const listening = request[kSession] === undefined
    request[kSession] = session
    // Listened to only by requests that use the database: others pay nothing for it.
    const response = reply.raw
    const onClose = (): void => {
      const current = request[kSession]?.work
      if (current !== undefined && !current.finished) finishOnClose(current, request, reply)
    }
    // Left in place once the session finished, and then a no-op: removing a response's listener
    // deletes a property of its event table, which makes every later event on it slower.
    if (!listening) response.on('close', onClose)
    // A client gone before the first query: the close has passed already.
    if (response.destroyed) onClose()
    return session
  }

  /** The user's commitWhen, checked: a Promise (an async commitWhen) would always be truthy. */
  function decide (request: FastifyRequest, reply: FastifyReply): boolean {
    const commit = commitWhen(request, reply)
    if (typeof commit !== 'boolean') {
      throw new InvalidOptionError(`commitWhen must return a boolean; it returned '${String(commit)}' (it must not be async)`)
    }
    return commit
  }

  // Stands in for the session of a request whose response is out: request.db first touched after
  // that (in onResponse, or by work left running) throws instead of holding a connection forever.
  const responded = new WorkExecutor(runtime, new UnitOfWork(runtime, { statements: ['BEGIN'], autocommit: null, quietCommit: false }))
  responded.work.finish(false, 'the response was already sent')

  fastify.decorateRequest(kSession, null)
  fastify.decorateRequest(kReply, null)
  // The reply, for a session to listen to its response; a plain assignment for every request.
  fastify.addHook('onRequest', function (request, reply, done) {
    (request as SessionRequest)[kReply] = reply
    done()
  })
  fastify.decorateRequest(decorator, {
    getter (this: FastifyRequest) {
      const request = this as SessionRequest
      return (request[kSession] ?? startSession(request)).transaction
    }
  })

  // What a retrying handler (retry.ts) needs of the request's unit of work.
  const units: RequestUnits = {
    current: (request) => (request as SessionRequest)[kSession]?.work ?? null,
    discard: (request) => { (request as SessionRequest)[kSession] = undefined },
    decide
  }
  fastify.addHook('onRoute', (route) => {
    settings.check(route.config, route.url)
    retrier.wrap(route, units)
  })

  // The request's unit of work for callbacks and savepoints: the one request.db uses, started
  // (without a connection) if the request has none yet.
  const sessionOf = (request: FastifyRequest): WorkExecutor => (request as SessionRequest)[kSession] ?? startSession(request as SessionRequest)
  const register = (afterCommit: boolean) => (request: FastifyRequest, fn: HookCallback): void => {
    checkCallback(fn, afterCommit ? 'afterCommit' : 'afterRollback')
    const { config } = request.routeOptions
    sessionOf(request).work.hooks(() => ({ log: request.log, route: `${config.method} ${config.url}`, requestId: request.id })).add(afterCommit, fn)
  }

  // Plain functions, not async: a request that never touched request.db costs no promise. One
  // that did returns a promise, which Fastify awaits, catching what its continuation throws.
  fastify.addHook('onSend', function (request, reply, payload, done) {
    const session = (request as SessionRequest)[kSession]?.work
    if (session === undefined) {
      (request as SessionRequest)[kSession] = responded
      done(null, payload)
      return
    }
    if (session.finished) {
      const interruption = session.takeInterruption()
      if (interruption === null) done(null, payload)
      else done(interruption)
      return
    }
    return finishBeforeSending(session, request, reply, payload, done)
  })

  // Not async: the finish's own promise, continued once, is all that Fastify waits on.
  function finishBeforeSending (session: UnitOfWork, request: FastifyRequest, reply: FastifyReply, payload: unknown, done: (error: Error | null, payload?: unknown) => void): Promise<unknown> | undefined {
    let commit: boolean
    try {
      // Nobody would learn of a commit made for a client that is gone.
      commit = !reply.raw.destroyed && decide(request, reply)
    } catch (error) {
      return session.finish(false, 'commitWhen threw', error).then(() => { throw error })
    }
    if (commit && session.answersBeforeCommit) {
      // A read-only transaction has nothing to lose at COMMIT: the response goes now, and the
      // COMMIT and the connection's return follow it.
      session.finish(true, 'the response was sent').then(({ error }) => {
        if (error !== null) request.log.error({ err: error }, 'fastify-db-session: COMMIT of a read-only transaction failed after its response was sent')
      })
      done(null, payload)
      return
    }
    // A failed COMMIT becomes the response: the client never hears "200 OK" for lost work.
    return session.finish(commit, 'the response was sent').then(({ error, position }) => {
      if (error !== null) throw error
      // What the client hands back, for its next reads to see this write (read-your-writes).
      if (position !== null) reply.header(LSN_HEADER, position)
      return payload
    })
  }

  const callbacks: RequestCallbacks = {
    afterCommit: register(true),
    afterRollback: register(false),
    savepoint: (request, fn) => {
      checkCallback(fn, 'savepoint')
      return sessionOf(request).savepoint(fn)
    }
  }

  fastify.addHook('onError', function (request, _reply, error, done) {
    const session = (request as SessionRequest)[kSession]?.work
    if (session === undefined) {
      done()
      return
    }
    // A handler timeout runs onError while the handler still runs. Held here until the rollback
    // (behind a query still running), the 503 would wait, and the handler resuming meanwhile would
    // reply inside onError: FST_ERR_SEND_INSIDE_ONERR, an unhandled rejection. Roll back behind it.
    if ((error as { code?: string }).code === 'FST_ERR_HANDLER_TIMEOUT') {
      session.finish(false, 'the handler timed out', error)
      done()
      return
    }
    return session.finish(false, 'the request failed', error).then(ignore)
  })

  /**
   * The response closed before the session finished: onSend never ran for it. If it ended (a
   * hijacked reply the handler wrote itself), commit what was sent as a success, after the fact,
   * and log what could not be told; if it never ended (a hang-up, a socket timeout, an HTTP/2
   * stream reset while the handler runs), roll back at once.
   */
  function finishOnClose (session: UnitOfWork, request: FastifyRequest, reply: FastifyReply): void {
    if (!reply.raw.writableEnded) {
      runtime.source.telemetry.aborted()
      session.finish(false, 'the client went away')
      return
    }
    let commit = false
    try {
      commit = decide(request, reply)
    } catch (error) {
      request.log.error({ err: error }, 'fastify-db-session: commitWhen threw; rolled back')
    }
    session.finish(commit, 'the hijacked response ended').then(({ error }) => {
      if (error !== null) request.log.error({ err: error }, 'fastify-db-session: COMMIT failed after a hijacked response was sent')
    })
  }

  return callbacks
}
