import Fastify from 'fastify'
import type { Generated } from 'kysely'
import dbSession from 'fastify-db-session'

interface Database {
  accounts: { id: Generated<number>, name: string, balance: number }
}
declare module 'fastify-db-session' {
  interface DbSessionRegister { database: Database }
}

const app = Fastify()
// Every route may run its handler up to 3 more times after a serialization failure or deadlock.
await app.register(dbSession, { connectionString: process.env.DATABASE_URL!, retries: 3 }) // DATABASE_URL must be set
await app.db.kysely.schema.dropTable('accounts').ifExists().execute()
await app.db.kysely.schema.createTable('accounts')
  .addColumn('id', 'serial', (col) => col.primaryKey())
  .addColumn('name', 'text', (col) => col.notNull().unique())
  .addColumn('balance', 'integer', (col) => col.notNull())
  .execute()
await app.db.kysely.insertInto('accounts').values([{ name: 'alice', balance: 100 }, { name: 'bob', balance: 100 }]).execute()

app.post<{ Body: { from: string, to: string, amount: number } }>('/transfers', {
  config: { db: { isolationLevel: 'serializable' } }
}, async (request, reply) => {
  // All of this runs again when the transaction loses a conflict: no mail, no queue, no outside call in here.
  const { from, to, amount } = request.body
  const payer = await request.db.selectFrom('accounts').select('balance').where('name', '=', from).executeTakeFirstOrThrow()
  if (payer.balance < amount) return reply.code(422).send({ message: 'insufficient funds' })
  await request.db.updateTable('accounts').set((eb) => ({ balance: eb('balance', '-', amount) })).where('name', '=', from).execute()
  await request.db.updateTable('accounts').set((eb) => ({ balance: eb('balance', '+', amount) })).where('name', '=', to).execute()
  return reply.code(201).send({ from, to, amount })
})

// Four transfers at once, two each way: they conflict, and the losers run again.
const transfers = [['alice', 'bob'], ['bob', 'alice'], ['alice', 'bob'], ['bob', 'alice']]
const responses = await Promise.all(transfers.map(([from, to]) =>
  app.inject({ method: 'POST', url: '/transfers', payload: { from, to, amount: 10 } })))
console.log(responses.map((response) => response.statusCode).join(' ')) // 201 201 201 201

// fastify.db.transaction takes the option too: the function runs again, whole.
const total = await app.db.transaction((trx) => trx.selectFrom('accounts')
  .select((eb) => eb.fn.sum<number>('balance').as('total')).executeTakeFirstOrThrow(), { isolationLevel: 'serializable', retries: 5 })
console.log(`total ${total.total}, ${app.db.stats().retries} retries`) // total 200, 3 retries (the count varies from run to run)
await app.close()
