import t from 'tap'
import { testDatabase, eventually } from './helpers/database.js'
import Fastify from 'fastify'
import dbSession from '../lib/index.js'
import { startProxy } from './helpers/tcp-proxy.js'

t.test('a COMMIT that fails is the response: never a 2xx, the database error kept as cause', async (t) => {
  const db = await testDatabase(t)
  await db.query(`CREATE TABLE items (name text,
    CONSTRAINT unique_name UNIQUE (name) DEFERRABLE INITIALLY DEFERRED)`)
  const app = await db.app()
  let cause: { code?: string } | undefined
  app.setErrorHandler((error, _request, reply) => {
    cause = (error as { cause?: { code?: string } }).cause
    reply.send(error)
  })
  app.post('/', async (request, reply) => {
    // Both inserts pass; the deferred constraint fails only at COMMIT, after the handler returned.
    await request.db.insertInto('items').values([{ name: 'twin' }, { name: 'twin' }]).execute()
    return reply.code(201).send({ created: 2 })
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_DB_SESSION_COMMIT_FAILED')
  t.equal(cause?.code, '23505')
  t.equal((await db.query('SELECT count(*)::int AS n FROM items')).rows[0].n, 0)
  t.equal(app.db.stats().commitFailures, 1)
  t.equal(app.db.stats().commits, 0)
  t.equal(app.db.stats().active, 0)
  t.equal(app.db.stats().destroyed, 0, 'the connection was healthy after the failed COMMIT: returned, not destroyed')
})

t.test('a serialization failure, in a query or at COMMIT, answers 409 FST_DB_SESSION_SERIALIZATION_FAILURE', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE doctors (name text PRIMARY KEY, on_call boolean NOT NULL)')
  await db.query("INSERT INTO doctors VALUES ('alice', true), ('bob', true)")
  const app = await db.app({ isolationLevel: 'serializable' })
  const sent: unknown[] = []
  app.setErrorHandler(async (error, _request, reply) => { sent.push(error); return reply.send(error) })
  // Classic write skew: each request sees two doctors on call and takes one off.
  let arrived = 0
  let release: () => void = () => {}
  const bothRead = new Promise<void>((resolve) => { release = resolve })
  app.post('/off/:name', async (request) => {
    const { name } = request.params as { name: string }
    const { n } = await request.db.selectFrom('doctors').where('on_call', '=', true)
      .select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()
    if (++arrived === 2) release()
    await bothRead
    if (Number(n) >= 2) await request.db.updateTable('doctors').set({ on_call: false }).where('name', '=', name).execute()
    return { ok: true }
  })
  const [a, b] = await Promise.all([
    app.inject({ method: 'POST', url: '/off/alice' }),
    app.inject({ method: 'POST', url: '/off/bob' })
  ])
  const statuses = [a.statusCode, b.statusCode].sort()
  t.same(statuses, [200, 409])
  const failed = a.statusCode === 409 ? a : b
  t.equal(failed.json().code, 'FST_DB_SESSION_SERIALIZATION_FAILURE')
  t.match(sent, [{ code: 'FST_DB_SESSION_SERIALIZATION_FAILURE', cause: { code: '40001' } }], 'PostgreSQL\'s error is kept as the cause')
  t.equal((await db.query('SELECT count(*)::int AS n FROM doctors WHERE on_call')).rows[0].n, 1)
  t.equal(await db.idleInTransaction(), 0)
})

t.test('a deadlock at COMMIT answers 409 FST_DB_SESSION_DEADLOCK', async (t) => {
  const db = await testDatabase(t)
  // A deferred constraint trigger that locks the other request's row runs at COMMIT: two
  // requests that each hold one row then deadlock inside their COMMITs.
  await db.query('CREATE TABLE accounts (id int PRIMARY KEY, partner int NOT NULL, touched int NOT NULL DEFAULT 0)')
  await db.query('INSERT INTO accounts (id, partner) VALUES (1, 2), (2, 1)')
  await db.query(`CREATE FUNCTION lock_partner() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_sleep(0.2);
      PERFORM 1 FROM accounts WHERE id = NEW.partner FOR UPDATE;
      RETURN NULL;
    END $$`)
  await db.query(`CREATE CONSTRAINT TRIGGER lock_partner AFTER UPDATE ON accounts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION lock_partner()`)
  await db.query('ALTER DATABASE ' + db.name + " SET deadlock_timeout = '50ms'")
  const app = await db.app()
  const sent: unknown[] = []
  app.setErrorHandler(async (error, _request, reply) => { sent.push(error); return reply.send(error) })
  let arrived = 0
  let release: () => void = () => {}
  const bothLocked = new Promise<void>((resolve) => { release = resolve })
  app.post('/touch/:id', async (request) => {
    const id = Number((request.params as { id: string }).id)
    await request.db.updateTable('accounts').set((eb) => ({ touched: eb('touched', '+', 1) })).where('id', '=', id).execute()
    if (++arrived === 2) release()
    await bothLocked
    return { ok: true }
  })
  const [a, b] = await Promise.all([
    app.inject({ method: 'POST', url: '/touch/1' }),
    app.inject({ method: 'POST', url: '/touch/2' })
  ])
  const statuses = [a.statusCode, b.statusCode].sort()
  t.same(statuses, [200, 409])
  const failed = a.statusCode === 409 ? a : b
  t.equal(failed.json().code, 'FST_DB_SESSION_DEADLOCK')
  t.match(sent, [{ code: 'FST_DB_SESSION_DEADLOCK', cause: { code: '40P01' } }], 'PostgreSQL\'s error is kept as the cause')
  t.equal((await db.query('SELECT sum(touched)::int AS n FROM accounts')).rows[0].n, 1, 'only the survivor committed')
  t.equal(await eventually(() => db.idleInTransaction(), (n) => n === 0), 0)
})

t.test('a connection lost while COMMIT is in flight: 500 FST_DB_SESSION_COMMIT_OUTCOME_UNKNOWN, not "rolled back"', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const proxy = await startProxy(t, db.url)
  const app = Fastify({ logger: { level: 'silent' } })
  t.teardown(() => app.close())
  await app.register(dbSession, { connectionString: proxy.urlFor(db.url) })
  app.post('/items', async (request) => {
    await request.db.insertInto('items').values({ name: 'maybe' }).execute()
    // COMMIT reaches PostgreSQL; its answer never reaches the app.
    proxy.cutAfterClientSends = 'COMMIT'
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/items' })
  t.equal(res.statusCode, 500, 'never a 2xx: success was not confirmed')
  t.equal(res.json().code, 'FST_DB_SESSION_COMMIT_OUTCOME_UNKNOWN')
  t.match(res.json().message, /whether the transaction committed is unknown/)
  const { rows } = await eventually(() => db.query('SELECT name FROM items'), (r) => r.rows.length === 1)
  t.same(rows, [{ name: 'maybe' }], 'and indeed it committed: saying "rolled back" would have been a lie')
  const stats = app.db.stats()
  t.equal(stats.commitFailures, 1)
  t.equal(stats.rollbacks, 0, 'not counted as a rollback')
  t.equal(stats.commits, 0, 'nor as a commit')
  t.equal(stats.destroyed, 1, 'the lost connection was destroyed')
})
