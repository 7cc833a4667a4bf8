// HTTP/2: a client resetting its stream makes Node emit 'finish' on the response, so Fastify runs
// onResponse while the handler is still running. The plugin must roll back, never commit half a handler.
import t from 'tap'
import http2 from 'node:http2'
import { eventually, testDatabase } from './helpers/database.js'

t.test('http2: a stream reset mid-handler rolls back instead of committing the work done so far', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const app = await db.app({}, { http2: true } as never)
  let firstDone!: () => void
  const first = new Promise<void>((resolve) => { firstDone = resolve })
  let secondOutcome = 'not reached'
  app.post('/transfer', async (request) => {
    await request.db.insertInto('items').values({ name: 'debit' }).execute()
    firstDone()
    await new Promise((resolve) => setTimeout(resolve, 300))
    secondOutcome = await request.db.insertInto('items').values({ name: 'credit' }).execute()
      .then(() => 'ran', (error: Error & { code?: string }) => error.code ?? error.message)
    return { ok: true }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const session = http2.connect(`http://127.0.0.1:${port}`)
  t.teardown(() => { session.close() })
  const stream = session.request({ ':method': 'POST', ':path': '/transfer' })
  stream.on('error', () => {})
  stream.end()
  await first
  stream.close(http2.constants.NGHTTP2_CANCEL)
  await new Promise((resolve) => setTimeout(resolve, 600))
  const stats = await eventually(async () => app.db.stats(), (s) => s.active === 0)
  t.comment(`second insert: ${secondOutcome}; stats ${JSON.stringify(stats)}`)
  t.same((await db.query('SELECT name FROM items')).rows, [], 'half a handler is never committed')
  t.equal(stats.commits, 0)
  t.equal(await db.idleInTransaction(), 0)
})
