// Fastify's own timeouts end a request while its handler still runs: the handler timeout through
// the error path (a 503), the socket timeout by destroying the socket. Either way the transaction
// must be rolled back then, not committed when the late handler finally returns.
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { sql } from 'kysely'
import { eventually, testDatabase } from './helpers/database.js'
import { deferred, itemNames } from './helpers/util.js'

async function laterInsert (request: { db: any }): Promise<{ code?: string } | null> {
  try {
    await request.db.insertInto('items').values({ name: 'later' }).execute()
    return null
  } catch (error) {
    return error as { code?: string }
  }
}

t.test('handlerTimeout: the 503 rolls back, the late handler cannot commit', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app()
  const go = deferred()
  const done = deferred<{ code?: string } | null>()
  app.post('/items', { handlerTimeout: 150 }, async (request) => {
    await request.db.insertInto('items').values(request.body as { name: string }).execute()
    await go.promise // longer than the timeout: the test lets it go only after the 503
    done.resolve(await laterInsert(request))
    return { ok: true }
  })

  const started = Date.now()
  const res = await app.inject({ method: 'POST', url: '/items', payload: { name: 'apple' } })
  t.ok(Date.now() - started >= 140, 'the response came from the timeout')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_ERR_HANDLER_TIMEOUT')

  // Rolled back on the error path (the 503 does not wait for it) while the handler still waits.
  let stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 1 && s.active === 0)
  t.equal(stats.rollbacks, 1, 'the timeout rolled the transaction back')
  t.equal(stats.commits, 0)
  t.equal(stats.active, 0, 'the connection is back in the pool while the handler still waits')
  t.equal(await db.idleInTransaction(), 0, 'no backend is left idle in transaction')
  t.same(await itemNames(db), [])

  go.resolve()
  const laterError = await done.promise
  t.equal(laterError?.code, 'FST_DB_SESSION_TRANSACTION_FINISHED', 'the handler\'s query after the timeout is refused')
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(await itemNames(db), [], 'after the handler finished: neither row exists')
  stats = app.db.stats()
  t.equal(stats.commits, 0, 'the handler returning did not commit')
  t.equal(stats.rollbacks, 1, 'the transaction finished once')
  t.equal(stats.active, 0)
  t.equal(stats.acquires, 1)
  t.equal(await db.idleInTransaction(), 0)
})

t.test('handlerTimeout during a running query: the 503 leaves at once, nothing crashes, the rollback follows the query', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const unhandled: unknown[] = []
  const onUnhandled = (error: unknown): void => { unhandled.push(error) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.removeListener('unhandledRejection', onUnhandled) })
  const app = await db.app({}, { logger: { level: 'silent' } })
  const done = deferred<{ code?: string } | null>()
  app.post('/items', { handlerTimeout: 100 }, async (request) => {
    await request.db.insertInto('items').values(request.body as { name: string }).execute()
    await sql`SELECT pg_sleep(0.6)`.execute(request.db)
    done.resolve(await laterInsert(request))
    return { ok: true }
  })

  const res = await app.inject({ method: 'POST', url: '/items', payload: { name: 'apple' } })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_ERR_HANDLER_TIMEOUT')
  const { rows } = await db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND query LIKE '%pg_sleep(0.6)%' AND state = 'active' AND pid <> pg_backend_pid()", [db.name])
  t.equal(rows[0].n, 1, 'the 503 arrived while the query still ran: it did not wait for the rollback')

  t.equal((await done.promise)?.code, 'FST_DB_SESSION_TRANSACTION_FINISHED', 'the handler resumed, and its next query was refused')
  const stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 1 && s.active === 0)
  t.equal(stats.rollbacks, 1, 'rolled back once the query ended')
  t.equal(stats.active, 0)
  t.equal(stats.commits, 0)
  t.same(await itemNames(db), [], 'nothing was committed')
  t.equal(await db.idleInTransaction(), 0)
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(unhandled, [], 'no unhandled rejection (a reply sent inside onError would be one)')
})

t.test('connectionTimeout: the server destroying the idle socket rolls back', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app({}, { connectionTimeout: 300 })
  const inserted = deferred()
  const go = deferred()
  const done = deferred<{ code?: string } | null>()
  app.post('/items', async (request) => {
    await request.db.insertInto('items').values(request.body as { name: string }).execute()
    inserted.resolve()
    await go.promise // stalls: no byte moves on the socket, so its timeout fires
    done.resolve(await laterInsert(request))
    return { ok: true }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })

  const { port } = app.server.address() as AddressInfo
  const socket = connect({ port, host: '127.0.0.1' })
  let received = ''
  socket.setEncoding('utf8')
  socket.on('data', (chunk: string) => { received += chunk })
  socket.on('error', () => {})
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
  const body = JSON.stringify({ name: 'apple' })
  socket.write(`POST /items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`)
  await inserted.promise
  t.equal(await db.idleInTransaction(), 1, 'the transaction is open while the handler stalls')
  const stalledAt = Date.now()

  await closed
  t.ok(Date.now() - stalledAt >= 200, 'the server closed the socket on its timeout')
  t.equal(received, '', 'the client got no response, only a closed socket')

  const stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 1 && s.active === 0)
  t.equal(stats.rollbacks, 1, 'the socket timeout rolled the transaction back')
  t.equal(stats.commits, 0)
  t.equal(stats.active, 0, 'the connection is back in the pool while the handler still stalls')
  t.equal(await db.idleInTransaction(), 0, 'no backend is left idle in transaction')
  t.same(await itemNames(db), [])

  go.resolve()
  const laterError = await done.promise
  t.equal(laterError?.code, 'FST_DB_SESSION_TRANSACTION_FINISHED', 'the handler\'s query after the timeout is refused')
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(await itemNames(db), [], 'after the handler finished: neither row exists')
  t.equal(app.db.stats().commits, 0, 'the handler returning 200 did not commit')
  t.equal(app.db.stats().rollbacks, 1)
  t.equal(app.db.stats().active, 0)
  t.equal(await db.idleInTransaction(), 0)
})
