// commitWhen must return a boolean; an async one (a Promise, always truthy) must not commit every request.
import t from 'tap'
import { testDatabase } from './helpers/database.js'

t.test('an async commitWhen that resolves to false must not commit a 500', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const commitWhen = (async (_request: unknown, reply: { statusCode: number }) => reply.statusCode < 400) as unknown as () => boolean
  const app = await db.app({ commitWhen })
  app.post('/', async (request, reply) => {
    await request.db.insertInto('items').values({ name: 'half-done' }).execute()
    return reply.code(500).send({ failed: true })
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 500)
  t.same((await db.query('SELECT name FROM items')).rows, [], 'the failed request\'s row is absent')
})
