// A pool that is not this copy of pg's Pool (pg-pool itself, another copy of pg) is spread as if it
// were a PoolConfig: the plugin then builds its own pool from the instance's fields, ignoring the
// connection settings that live in pool.options. It should use the pool, or refuse it.
import t from 'tap'
// Typed by @types/pg-pool (a devDependency; @opentelemetry/instrumentation-pg brings it too).
import PgPool from 'pg-pool'
import { testDatabase } from './helpers/database.js'

t.test('a pg-pool Pool given as pool: used as is, or refused at registration', async (t) => {
  const db = await testDatabase(t)
  const foreign = new PgPool({ connectionString: db.url, max: 2 })
  t.teardown(() => foreign.end())
  let app
  try {
    app = await db.app({ connectionString: undefined, pool: foreign as never })
  } catch (error) {
    t.equal((error as { code?: string }).code, 'FST_DB_SESSION_INVALID_OPTION', 'refused with a coded error')
    return
  }
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  const res = await app.inject('/')
  t.equal(app.db.pool as unknown, foreign, 'fastify.db.pool is the pool given')
  t.equal(res.statusCode, 200, `the query ran on the given pool: ${res.body}`)
})
