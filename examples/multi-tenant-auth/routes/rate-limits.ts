// A second limit on a route that has one in its config: @fastify/rate-limit runs one limiter per
// request (the first marks the request as limited), so this one checks with createRateLimit and
// answers 429 itself.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'

/** An onRequest hook: at most `max` requests per address in `timeWindow` ms, before the body is read. */
export function limitPerAddress (app: FastifyInstance, max: number, timeWindow: number): (request: FastifyRequest, reply: FastifyReply) => Promise<void> {
  const check = app.createRateLimit({ max, timeWindow })
  return async (request, reply) => {
    const limit = await check(request)
    if (limit.isAllowed || !limit.isExceeded) return
    reply.header('retry-after', limit.ttlInSeconds)
    throw Object.assign(new Error(`Rate limit exceeded for this address, retry in ${limit.ttlInSeconds} seconds`), { statusCode: 429, code: 'RATE_LIMITED' })
  }
}
