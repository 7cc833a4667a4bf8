// request.db first touched after the plugin's onSend (an onResponse hook, work the handler left
// running): nothing finishes that transaction, so its connection stays checked out, idle in
// transaction, until the socket closes (never, under inject) or fastify.close() counts it as a leak.
import t from 'tap'
import { eventually, testDatabase } from './helpers/database.js'

t.test('an onResponse hook that queries request.db on a route that did not: the connection must not stay in a transaction', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE audit (url text)')
  const app = await db.app()
  const audited = new Promise<unknown>((resolve) => {
    app.addHook('onResponse', async (request) => {
      // An audit log written after the response: it either commits, or it fails loudly.
      resolve(await request.db.insertInto('audit').values({ url: request.url }).execute().catch((error: Error) => error))
    })
  })
  app.get('/ping', async () => 'pong')
  const res = await app.inject('/ping')
  t.equal(res.statusCode, 200)
  const outcome = await audited
  t.match(outcome, { code: 'FST_DB_SESSION_TRANSACTION_FINISHED' }, 'the late query is refused with the coded error')
  t.same((await db.query('SELECT url FROM audit')).rows, [], 'and wrote nothing, in no transaction')
  t.equal(app.db.stats().acquires, 0, 'it took no connection')
  const stats = await eventually(async () => app.db.stats(), (s) => s.active === 0, 1000)
  t.equal(stats.active, 0, 'the connection went back to the pool')
  t.equal(await db.idleInTransaction(), 0, 'no backend is left idle in transaction')
})
