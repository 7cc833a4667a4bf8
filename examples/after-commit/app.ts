import Fastify from 'fastify'
import dbSession from 'fastify-db-session'

const app = Fastify()
await app.register(dbSession, { connectionString: process.env.DATABASE_URL! }) // DATABASE_URL must be set
await app.db.kysely.schema.createTable('orders').ifNotExists()
  .addColumn('id', 'serial', (col) => col.primaryKey())
  .addColumn('sku', 'text', (col) => col.notNull().unique())
  .execute()

// Stands in for a mailer, a queue, a cache: whatever tells the world.
const sent: string[] = []
const mailer = { send: async (text: string) => { sent.push(text) } }

app.post('/orders', async (request, reply) => {
  const { sku } = request.body as { sku: string }
  request.afterCommit(() => mailer.send(`order ${sku} confirmed`)) // after COMMIT, before the 201 leaves
  request.afterRollback(() => { request.log.warn({ sku }, 'order not placed') }) // on every path without a commit
  const order = await request.db.insertInto('orders').values({ sku }).returning('id').executeTakeFirstOrThrow()
  return reply.code(201).send(order)
})

app.post('/orders/batch', async (request) => {
  const placed: string[] = []
  for (const sku of request.body as string[]) {
    // A duplicate fails inside its own savepoint: that row and its mail are dropped, the others stay.
    const ok = await request.savepoint(async (trx) => {
      request.afterCommit(() => mailer.send(`order ${sku} confirmed`))
      await trx.insertInto('orders').values({ sku }).execute()
    }).then(() => true, () => false)
    if (ok) placed.push(sku)
  }
  return { placed }
})

// Outside a request: transaction() resolves once the unit's afterCommit callbacks ran.
await app.db.transaction(async (trx, unit) => {
  await trx.insertInto('orders').values({ sku: 'nightly' }).execute()
  unit.afterCommit(() => mailer.send('order nightly confirmed'))
})

const order = (sku: string) => app.inject({ method: 'POST', url: '/orders', payload: { sku } })
console.log((await order('apple')).statusCode) // 201
console.log((await order('apple')).statusCode) // 500 (a duplicate: rolled back, nothing mailed)
console.log((await app.inject({ method: 'POST', url: '/orders/batch', payload: ['pear', 'apple', 'plum'] })).body) // {"placed":["pear","plum"]}
console.log(sent.join(', ')) // order nightly confirmed, order apple confirmed, order pear confirmed, order plum confirmed
await app.close()
