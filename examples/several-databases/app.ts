import Fastify from 'fastify'
import type { Generated, Transaction } from 'kysely'
import dbSession, { combineMetrics } from 'fastify-db-session'
import type { DbRouteConfig, FastifyDbSession } from 'fastify-db-session'

interface Database {
  items: { id: Generated<number>, name: string }
}
interface AnalyticsDatabase {
  events: { id: Generated<number>, kind: string, item_id: number }
}
// request.db and fastify.db: the registration with the default decorator, typed as in the quick start.
declare module 'fastify-db-session' {
  interface DbSessionRegister { database: Database }
}
// request.analytics, fastify.analytics and config.analytics: the app declares them, with their database.
declare module 'fastify' {
  interface FastifyRequest { readonly analytics: Transaction<AnalyticsDatabase> }
  interface FastifyInstance { analytics: FastifyDbSession<AnalyticsDatabase> }
  interface FastifyContextConfig { analytics?: DbRouteConfig }
}

export const app = Fastify()
await app.register(dbSession, { connectionString: process.env.DATABASE_URL! })
// Its own pool, transactions, hooks and stats; its metrics are labelled pool="analytics".
await app.register(dbSession, { connectionString: process.env.ANALYTICS_DATABASE_URL!, decorator: 'analytics' })
await app.db.kysely.schema.createTable('items').ifNotExists()
  .addColumn('id', 'serial', (col) => col.primaryKey())
  .addColumn('name', 'text', (col) => col.notNull())
  .execute()
await app.analytics.kysely.schema.createTable('events').ifNotExists()
  .addColumn('id', 'serial', (col) => col.primaryKey())
  .addColumn('kind', 'text', (col) => col.notNull())
  .addColumn('item_id', 'integer', (col) => col.notNull())
  .execute()

app.post<{ Body: { name: string } }>('/items', async (request, reply) => {
  const item = await request.db.insertInto('items').values(request.body).returningAll().executeTakeFirstOrThrow()
  await request.analytics.insertInto('events').values({ kind: 'item created', item_id: item.id }).execute()
  return reply.code(201).send(item) // both transactions committed before this 201 is sent
})
// Reads the analytics database only, read-only; `db: false` keeps this route off the main database.
app.get('/report', { config: { db: false, analytics: { accessMode: 'read only' } } }, async (request) =>
  request.analytics.selectFrom('events')
    .select((eb) => ['kind', eb.cast<number>(eb.fn.countAll(), 'integer').as('count')])
    .groupBy('kind').execute())
app.get('/metrics', async (_request, reply) => reply.type('text/plain').send(combineMetrics(app.db, app.analytics)))

const address = await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
console.log(`listening on ${address}`)
