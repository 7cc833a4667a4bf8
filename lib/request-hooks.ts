import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { DbSession } from './db-session.js'
import type { SessionRuntime } from './db-session.js'
import { DbDisabledError } from './errors.js'
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

  /** The user's commitWhen, unless the client is gone: then nobody would learn of the commit. */
  function shouldCommit (request: FastifyRequest, reply: FastifyReply): boolean {
    return !reply.raw.destroyed && commitWhen(request, reply)
  }

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

  fastify.addHook('onSend', function (request, reply, payload, done) {
    const session = (request as SessionRequest)[kSession]
    if (session === null || session.finished) {
      done(null, payload)
      return
    }
    let commit: boolean
    try {
      commit = shouldCommit(request, reply)
    } catch (error) {
      session.finish(false, 'commitWhen threw').then(() => { done(error as Error) })
      return
    }
    // A failed COMMIT becomes the response: the client never hears "200 OK" for lost work.
    session.finish(commit, 'the response was sent').then((error) => {
      if (error === null) done(null, payload)
      else done(error)
    })
  })

  fastify.addHook('onError', function (request, _reply, _error, done) {
    const session = (request as SessionRequest)[kSession]
    if (session === null) {
      done()
      return
    }
    session.finish(false, 'the request failed').then(() => { done() })
  })

  fastify.addHook('onResponse', function (request, reply, done) {
    const session = (request as SessionRequest)[kSession]
    if (session === null || session.finished) {
      done()
      return
    }
    // Only a hijacked reply gets here unfinished, and its response is already out: commit what
    // it reported as a success, and log what could not be told to the client. (Node marks a
    // finished response destroyed a tick later, so reply.raw.destroyed says nothing here; a
    // hang-up was handled by the socket's close.)
    let commit = false
    try {
      commit = commitWhen(request, reply)
    } catch (error) {
      request.log.error({ err: error }, 'fastify-db-session: commitWhen threw; rolled back')
    }
    session.finish(commit, 'the hijacked response ended').then((error) => {
      if (error !== null) request.log.error({ err: error }, 'fastify-db-session: COMMIT failed after a hijacked response was sent')
      done()
    })
  })
}
