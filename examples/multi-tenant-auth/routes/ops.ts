// Health and metrics: no request transaction (config.db false), so they work when the pool is full.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { sql } from 'kysely'

const opsRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/health', { config: { db: false } }, async (_request, reply) => {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => { timer = setTimeout(reject, 1000, new Error('database ping timed out')) })
    try {
      await Promise.race([sql`SELECT 1`.execute(app.db.kysely), timeout])
      return { status: 'ok', pool: app.db.stats() }
    } catch (error) {
      return reply.code(503).send({ status: 'unavailable', error: (error as Error).message, pool: app.db.stats() })
    } finally {
      clearTimeout(timer)
    }
  })

  app.get('/metrics', { config: { db: false } }, async (_request, reply) => {
    const stats = app.db.stats()
    const lines: string[] = []
    for (const [name, value] of Object.entries(stats)) {
      const counter = !['total', 'idle', 'active', 'waiting', 'max'].includes(name)
      const metric = `db_pool_${name.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase())}${counter ? '_total' : ''}`
      lines.push(`# TYPE ${metric} ${counter ? 'counter' : 'gauge'}`, `${metric}{pool="app"} ${value}`)
    }
    return reply.type('text/plain; version=0.0.4').send(lines.join('\n') + '\n')
  })
}

export default opsRoutes
