// The package as users load it: the built files, by name, from import and from require.
import t from 'tap'
import { createRequire } from 'node:module'
import Fastify from 'fastify'
import dbSession, { errors, fastifyDbSession } from 'fastify-db-session'
import { testDatabase } from './helpers/database.js'

const require = createRequire(import.meta.url)

t.test('import and require give the same plugin function, registered as fastify-db-session for Fastify 5', async (t) => {
  const required = require('fastify-db-session')
  t.equal(typeof dbSession, 'function')
  t.equal(fastifyDbSession, dbSession)
  t.equal(required, dbSession)
  t.equal(required.default, dbSession)
  t.equal(required.fastifyDbSession, dbSession)
  t.equal(required.errors, errors)
  t.match((dbSession as unknown as Record<symbol, unknown>)[Symbol.for('plugin-meta')], { name: 'fastify-db-session', fastify: '5.x' })
  t.equal(new errors.FST_DB_SESSION_ACQUIRE_TIMEOUT(100).statusCode, 503)
})

t.test('the built plugin works end to end', async (t) => {
  const db = await testDatabase(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(require('fastify-db-session'), { connectionString: db.url })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val('hello').as('greeting')).executeTakeFirst())
  t.same((await app.inject('/')).json(), { greeting: 'hello' })
  t.equal(app.db.stats().commits, 1)
})
