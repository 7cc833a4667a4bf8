// The plugin's onSend continues Fastify from a promise callback: whatever Fastify throws
// synchronously from there (Node's writeHead rejecting a header) must not become an unhandled
// rejection; without the plugin Fastify answers 500.
import t from 'tap'
import http from 'node:http'
import { testDatabase } from './helpers/database.js'

async function get (port: number, path: string): Promise<{ status: number } | { error: string }> {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, path, agent: false, timeout: 2000 }, (res) => {
      res.resume()
      res.on('end', () => { resolve({ status: res.statusCode ?? 0 }) })
    })
    req.on('timeout', () => { req.destroy(); resolve({ error: 'no answer in 2 s' }) })
    req.on('error', (error) => { resolve({ error: error.message }) })
    req.end()
  })
}

t.test('a header Node refuses, on a route that used request.db: a 500 like without the plugin, no unhandled rejection', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
  // tap turns an unhandled rejection into a failure of its own; count them here instead.
  process.prependListener('unhandledRejection', onUnhandled)
  t.teardown(() => { process.removeListener('unhandledRejection', onUnhandled) })
  app.get('/plain', async (_request, reply) => {
    reply.header('x-bad', 'a\nb')
    return 'x'
  })
  app.get('/db', async (request, reply) => {
    await request.db.selectNoFrom((eb) => eb.val(1).as('one')).execute()
    reply.header('x-bad', 'a\nb')
    return 'x'
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  t.same(await get(port, '/plain'), { status: 500 }, 'without request.db: Fastify answers 500')
  const withDb = await get(port, '/db')
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.same(unhandled.map((reason) => (reason as Error).message), [], 'no unhandled rejection')
  t.same(withDb, { status: 500 }, 'with request.db: the same 500')
  t.equal(app.db.stats().active, 0)
})
