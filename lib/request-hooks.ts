import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { DbSession } from './db-session.js'
import type { SessionRuntime } from './db-session.js'
import { ignore } from './callbacks.js'
import { DbDisabledError, InvalidOptionError } from './errors.js'
import type { routeSettingsResolver } from './transaction-settings.js'

const kSession = Symbol('fastify-db-session.session')

type CommitWhen = (request: FastifyRequest, reply: FastifyReply) => boolean
type SessionRequest = FastifyRequest & { [kSession]: DbSession | null }

/**
 * `request.db` and the hooks that finish its transaction on every way a request can end:
 * onSend (before the response leaves), onError (a thrown error), onResponse (a hijacked reply),
 * and the socket's close (a client hang-up or a socket timeout, where no hook may run).
 */
export function installRequestHooks (
  fastify: FastifyInstance,
  runtime: SessionRuntime,
  settings: ReturnType<typeof routeSettingsResolver>,
  commitWhen: CommitWhen,
  contextFor: ((request: FastifyRequest) => string) | null
): void {
  function startSession (request: SessionRequest): DbSession {
    const { config } = request.routeOptions
    const beginSettings = settings.forConfig(config)
    if (beginSettings === null) throw new DbDisabledError(config.method, config.url)
    const session = new DbSession(runtime, beginSettings, contextFor === null ? null : () => contextFor(request))
    request[kSession] = session
    const socket = request.raw.socket
    const onGone = (): void => { session.finish(false, 'the client went away') }
    socket.once('close', onGone)
    session.onFinish = () => { socket.removeListener('close', onGone) }
    // A client gone before the first query: its close event has passed already.
    if (socket.destroyed) onGone()
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
  const responded = new DbSession(runtime, { beginSql: 'BEGIN' })
  responded.finish(false, 'the response was already sent')

  fastify.decorateRequest(kSession, null)
  fastify.decorateRequest('db', {
    getter (this: FastifyRequest) {
      const request = this as SessionRequest
      return (request[kSession] ?? startSession(request)).transaction
    }
  })

  fastify.addHook('onRoute', (route) => {
    settings.check(route.config?.db, route.url)
  })

  // Plain functions, not async: a request that never touched request.db costs no promise. One
  // that did returns a promise, which Fastify awaits, catching what its continuation throws.
  fastify.addHook('onSend', function (request, reply, payload, done) {
    const session = (request as SessionRequest)[kSession]
    if (session === null) {
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
    return finishBeforeSending(session, request, reply, payload)
  })

  async function finishBeforeSending (session: DbSession, request: FastifyRequest, reply: FastifyReply, payload: unknown): Promise<unknown> {
    let commit: boolean
    try {
      // Nobody would learn of a commit made for a client that is gone.
      commit = !reply.raw.destroyed && decide(request, reply)
    } catch (error) {
      await session.finish(false, 'commitWhen threw')
      throw error
    }
    // A failed COMMIT becomes the response: the client never hears "200 OK" for lost work.
    const failure = await session.finish(commit, 'the response was sent')
    if (failure !== null) throw failure
    return payload
  }

  fastify.addHook('onError', function (request, _reply, _error, done) {
    const session = (request as SessionRequest)[kSession]
    if (session === null) {
      done()
      return
    }
    return session.finish(false, 'the request failed').then(ignore)
  })

  fastify.addHook('onResponse', function (request, reply, done) {
    const session = (request as SessionRequest)[kSession]
    if (session === null || session.finished) {
      done()
      return
    }
    return finishHijacked(session, request, reply)
  })

  /**
   * Only a reply that skipped onSend gets here unfinished: a hijacked one, whose response is out,
   * or an HTTP/2 stream reset while the handler still runs (its response was never ended).
   * Commit only what was really sent as a success, and log what could not be told.
   */
  async function finishHijacked (session: DbSession, request: FastifyRequest, reply: FastifyReply): Promise<void> {
    let commit = false
    try {
      commit = reply.raw.writableEnded && decide(request, reply)
    } catch (error) {
      request.log.error({ err: error }, 'fastify-db-session: commitWhen threw; rolled back')
    }
    const failure = await session.finish(commit, 'the hijacked response ended')
    if (failure !== null) request.log.error({ err: failure }, 'fastify-db-session: COMMIT failed after a hijacked response was sent')
  }
}
