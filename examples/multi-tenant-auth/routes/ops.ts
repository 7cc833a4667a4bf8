// Health and metrics: no request transaction (config.db false), so they answer when the pool is full.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'

const opsRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/health', { config: { db: false } }, async (request, reply) => {
    try {
      const pingMillis = await app.db.ping({ timeoutMillis: 1000 })
      return { status: 'ok', pingMillis, pool: app.db.stats() }
    } catch (error) {
      // The code only: the message can carry the database's host and its own text.
      request.log.warn({ err: error }, 'health check failed')
      return reply.code(503).send({ status: 'unavailable', error: (error as { code?: string }).code ?? 'PING_FAILED', pool: app.db.stats() })
    }
  })

  app.get('/metrics', { config: { db: false } }, async (_request, reply) => {
    return reply.type('text/plain; version=0.0.4; charset=utf-8').send(app.db.metrics())
  })
}

export default opsRoutes
