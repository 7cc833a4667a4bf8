// commitWhen must decide synchronously with a boolean: a Promise would always count as true.
import t from 'tap'
import Fastify from 'fastify'
import dbSession from '../lib/index.js'
import { testDatabase } from './helpers/database.js'

t.test('an async commitWhen is refused at register time', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  const commitWhen = (async () => true) as unknown as () => boolean
  await t.rejects(async () => { await app.register(dbSession, { connectionString: 'postgres://127.0.0.1:1/none', commitWhen }).ready() }, {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /commitWhen must be synchronous/
  })
})

t.test('a commitWhen that returns a non-boolean fails the request and rolls back', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  // Not an async function, but it returns a Promise all the same.
  const commitWhen = ((_request: unknown, reply: { statusCode: number }) => Promise.resolve(reply.statusCode < 400)) as unknown as () => boolean
  const app = await db.app({ commitWhen })
  app.post('/', async (request, reply) => {
    await request.db.insertInto('items').values({ name: 'half-done' }).execute()
    return reply.code(500).send({ failed: true })
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_DB_SESSION_INVALID_OPTION')
  t.match(res.json().message, /commitWhen must return a boolean; it returned '\[object Promise\]'/)
  t.same((await db.query('SELECT name FROM items')).rows, [], 'the failed request\'s row is absent')
  t.equal(app.db.stats().rollbacks, 1)
})
