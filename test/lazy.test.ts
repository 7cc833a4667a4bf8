import t from 'tap'
import { testDatabase } from './helpers/database.js'

t.test('a route that never queries takes no connection', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  app.get('/plain', async () => ({ ok: true }))
  app.get('/touches', async (request) => ({ isTransaction: request.db.isTransaction }))
  t.same((await app.inject('/plain')).json(), { ok: true })
  t.same((await app.inject('/touches')).json(), { isTransaction: true })
  t.equal(app.db.stats().acquires, 0)
  t.equal(app.db.stats().total, 0)
  t.equal(await db.connections(), 0)
})

t.test('concurrent first queries in one handler share one transaction', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  app.get('/', async (request) => {
    const read = () => request.db.selectNoFrom((eb) => [
      eb.fn<string>('txid_current').as('txid'),
      eb.fn<number>('pg_backend_pid').as('pid')
    ]).executeTakeFirstOrThrow()
    const rows = await Promise.all([read(), read(), read(), read()])
    return { txids: [...new Set(rows.map((r) => r.txid))], pids: [...new Set(rows.map((r) => r.pid))] }
  })
  const body = (await app.inject('/')).json()
  t.equal(body.txids.length, 1, 'one transaction')
  t.equal(body.pids.length, 1, 'one connection')
  t.equal(app.db.stats().acquires, 1)
  t.equal(app.db.stats().commits, 1)
})

t.test('two requests get two transactions and the connection is reused', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  app.get('/', async (request) => {
    const { txid } = await request.db.selectNoFrom((eb) => eb.fn<string>('txid_current').as('txid')).executeTakeFirstOrThrow()
    return { txid }
  })
  const first = (await app.inject('/')).json().txid
  const second = (await app.inject('/')).json().txid
  t.not(first, second)
  t.equal(app.db.stats().total, 1)
  t.equal(app.db.stats().idle, 1)
  t.equal(app.db.stats().acquires, 2)
})

t.test('a failing route that never touched request.db still takes no connection', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  app.get('/fails', async () => { throw new Error('no database here') })
  t.equal((await app.inject('/fails')).statusCode, 500)
  t.equal(app.db.stats().acquires, 0)
  t.equal(await db.connections(), 0)
})
