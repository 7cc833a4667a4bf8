// The README's quick start as a runnable app: items written through request.db.
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import type { Generated } from 'kysely'
import dbSession from 'fastify-db-session'

export interface Database {
  items: { id: Generated<number>, name: string }
}

// Types request.db and fastify.db with this app's tables.
declare module 'fastify-db-session' {
  interface DbSessionRegister { database: Database }
}

export async function buildApp (connectionString: string): Promise<FastifyInstance> {
  const app = Fastify({ logger: process.env.LOG === '1' })
  await app.register(dbSession, { connectionString, maxConnections: 10, acquireTimeoutMillis: 2000 })
  await app.db.kysely.schema.createTable('items').ifNotExists()
    .addColumn('id', 'serial', (col) => col.primaryKey())
    .addColumn('name', 'text', (col) => col.notNull().unique())
    .execute()

  // Committed before the 201 leaves; a duplicate name throws and rolls back.
  app.post<{ Body: { name: string } }>('/items', async (request, reply) => {
    const row = await request.db.insertInto('items').values({ name: request.body.name }).returningAll().executeTakeFirstOrThrow()
    return reply.code(201).send(row)
  })

  app.get('/items', async (request) => {
    return request.db.selectFrom('items').selectAll().orderBy('id').execute()
  })

  // No request.db here: the health check costs no connection.
  app.get('/health', async () => app.db.stats())
  return app
}
