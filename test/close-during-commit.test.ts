// close() landing while a COMMIT runs, and fastify.db.kysely.destroy(): neither may hang or break the pool.
import t from 'tap'
import { testDatabase, eventually, holderAndQueuedWaiter } from './helpers/database.js'

t.test('close() during a slow COMMIT: the request fails, nothing is committed, nothing hangs', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  // A deferred trigger makes COMMIT itself take a second.
  await db.query(`CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$`)
  await db.query(`CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON items
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()`)
  const app = await db.app({ closeTimeoutMillis: 200 })
  app.post('/', async (request) => {
    await request.db.insertInto('items').values({ name: 'slow' }).execute()
    return { ok: true }
  })
  const response = app.inject({ method: 'POST', url: '/' })
  await eventually(() => db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'COMMIT' AND state = 'active'").then((r) => r.rows[0].n), (n) => n === 1)
  const started = Date.now()
  await app.close()
  t.ok(Date.now() - started < 1000, 'close() did not wait for the COMMIT')
  const res = await response
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_DB_SESSION_COMMIT_FAILED')
  t.same((await db.query('SELECT name FROM items')).rows, [])
  t.equal(app.db.stats().leaks, 1)
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0)
})

t.test('fastify.db.kysely.destroy() does not end the plugin\'s pool', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  t.same(await app.db.kysely.selectNoFrom((eb) => eb.val(2).as('two')).executeTakeFirst(), { two: 2 })
  await app.db.kysely.destroy()
  t.equal(app.db.pool.ending, false)
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  t.same((await app.inject('/')).json(), { one: 1 })
})

t.test('a query still waiting for a connection when close() starts gets FST_DB_SESSION_CLOSING, not the connection', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const app = await db.app({ maxConnections: 1, acquireTimeoutMillis: 5000, closeTimeoutMillis: 1000 })
  const { holder, waiter, release } = await holderAndQueuedWaiter(app)
  // close() rolls the holder back, which hands its connection to the waiter's queued acquire.
  await app.close()
  release()
  const [held, waited] = await Promise.all([holder, waiter])
  t.equal(held.statusCode, 503, 'the holder was rolled back by close(), and told so')
  t.equal(held.json().code, 'FST_DB_SESSION_CLOSING')
  t.equal(waited.statusCode, 503)
  t.equal(waited.json().code, 'FST_DB_SESSION_CLOSING')
  t.same((await db.query('SELECT name FROM items')).rows, [])
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0, 'nothing is left open')
})
