// A hijacked reply is committed after its response is out: what fails then can only be logged.
import t from 'tap'
import { testDatabase, eventually } from './helpers/database.js'
import { capturedLogs } from './helpers/util.js'

t.test('a hijacked reply whose commitWhen throws rolls back and logs it', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const logs = capturedLogs()
  const app = await db.app({ commitWhen: () => { throw new Error('commitWhen exploded') } }, { logger: { stream: logs.stream } })
  app.post('/', async (request, reply) => {
    await request.db.insertInto('items').values({ name: 'hijacked' }).execute()
    reply.hijack()
    reply.raw.writeHead(200)
    reply.raw.end('ok')
  })
  const res = await app.inject({ method: 'POST', url: '/' })
  t.equal(res.statusCode, 200)
  const stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 1 && s.active === 0)
  t.equal(stats.commits, 0)
  t.same((await db.query('SELECT name FROM items')).rows, [])
  t.ok(logs.lines.some((line) => line.level === 50 && line.msg.includes('commitWhen threw; rolled back')))
})

t.test('a hijacked reply whose COMMIT fails after the response logs the failure', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text, CONSTRAINT unique_name UNIQUE (name) DEFERRABLE INITIALLY DEFERRED)')
  const logs = capturedLogs()
  const app = await db.app({}, { logger: { stream: logs.stream } })
  app.post('/', async (request, reply) => {
    await request.db.insertInto('items').values([{ name: 'twin' }, { name: 'twin' }]).execute()
    reply.hijack()
    reply.raw.writeHead(200)
    reply.raw.end('ok')
  })
  t.equal((await app.inject({ method: 'POST', url: '/' })).statusCode, 200)
  const stats = await eventually(async () => app.db.stats(), (s) => s.commitFailures === 1 && s.active === 0)
  t.equal(stats.commits, 0)
  t.same((await db.query('SELECT name FROM items')).rows, [])
  await eventually(async () => logs.lines.length, () => logs.lines.some((line) => line.msg.includes('COMMIT failed after a hijacked response')))
  t.ok(logs.lines.some((line) => line.level === 50 && line.msg.includes('COMMIT failed after a hijacked response was sent')))
})
