import t from 'tap'
import { testDatabase } from './helpers/database.js'

t.test('a successful request commits before its response is sent', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app()
  // Registered after the plugin, so it runs after the plugin's onSend, as the response is about to
  // leave: what another connection sees then is what was committed before the response was sent.
  let seenBeforeSending: unknown[] | null = null
  app.addHook('onSend', async (request) => {
    if (request.url === '/items') seenBeforeSending = (await db.query('SELECT name FROM items')).rows
  })
  app.post('/items', async (request, reply) => {
    const row = await request.db.insertInto('items').values(request.body as { name: string }).returningAll().executeTakeFirstOrThrow()
    return reply.code(201).send(row)
  })
  const res = await app.inject({ method: 'POST', url: '/items', payload: { name: 'apple' } })
  t.equal(res.statusCode, 201)
  t.same(res.json(), { id: 1, name: 'apple' })
  t.same(seenBeforeSending, [{ name: 'apple' }], 'committed before the response was sent')
  t.equal(app.db.stats().commits, 1)
  t.equal(app.db.stats().active, 0)
  t.equal(await db.idleInTransaction(), 0)
})
