import Fastify from 'fastify'
import type { Generated } from 'kysely'
import dbSession from 'fastify-db-session'

interface Database {
  items: { id: Generated<number>, name: string }
}
// Types request.db and fastify.db with your tables.
declare module 'fastify-db-session' {
  interface DbSessionRegister { database: Database }
}

export const app = Fastify()
await app.register(dbSession, { connectionString: process.env.DATABASE_URL! }) // DATABASE_URL must be set
// The table (a real app runs migrations: fastify.db.kysely serves Kysely's Migrator too).
await app.db.kysely.schema.createTable('items').ifNotExists()
  .addColumn('id', 'serial', (col) => col.primaryKey())
  .addColumn('name', 'text', (col) => col.notNull().unique())
  .execute()

app.post<{ Body: { name: string } }>('/items', async (request, reply) => {
  try {
    const row = await request.db.insertInto('items').values(request.body).returningAll().executeTakeFirstOrThrow()
    return reply.code(201).send(row) // committed before this 201 is sent
  } catch (error) {
    // A duplicate name (PostgreSQL's unique_violation): 409, which rolls back, without PostgreSQL's text.
    if ((error as { code?: string }).code === '23505') return reply.code(409).send({ message: 'an item with this name exists' })
    throw error
  }
})
app.get('/items', async (request) => request.db.selectFrom('items').selectAll().orderBy('id').execute())
// No request.db here: the health check takes no connection.
app.get('/health', async () => app.db.stats())

const address = await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
console.log(`listening on ${address}`)
