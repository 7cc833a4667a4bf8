// A hijacked reply skips onSend: the plugin finishes its transaction on the raw response's
// close, after the response the handler wrote itself has gone out (commit when its status is
// below 400), or when the client hangs up first (rollback).
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import Fastify from 'fastify'
import type { Test } from 'tap'
import dbSession from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'
import { deferred, itemNames } from './helpers/util.js'

async function setup (t: Test) {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app()
  let onResponseRan = 0
  app.addHook('onResponse', async () => { onResponseRan++ })
  return { db, app, onResponseRan: () => onResponseRan }
}

t.test('inject: a hijacked 200 commits once the response has ended', async (t) => {
  const { db, app, onResponseRan } = await setup(t)
  app.post('/items', async (request, reply) => {
    reply.hijack()
    await request.db.insertInto('items').values(request.body as { name: string }).execute()
    reply.raw.writeHead(200, { 'content-type': 'text/plain' })
    reply.raw.end('ok')
  })
  const res = await app.inject({ method: 'POST', url: '/items', payload: { name: 'apple' } })
  t.equal(res.statusCode, 200)
  t.equal(res.body, 'ok')
  // The commit follows the response (onResponse), so poll for it.
  t.same(await eventually(() => itemNames(db), (names) => names.length > 0), ['apple'], 'the row is present')
  t.equal(onResponseRan(), 1, 'onResponse ran for the hijacked reply under inject')
  const stats = await eventually(async () => app.db.stats(), (s) => s.active === 0)
  t.equal(stats.commits, 1, 'committed')
  t.equal(stats.rollbacks, 0)
  t.equal(stats.active, 0, 'the connection went back to the pool')
  t.equal(await db.idleInTransaction(), 0)
})

t.test('inject: a hijacked 500 rolls back', async (t) => {
  const { db, app, onResponseRan } = await setup(t)
  app.post('/items', async (request, reply) => {
    reply.hijack()
    await request.db.insertInto('items').values(request.body as { name: string }).execute()
    reply.raw.writeHead(500)
    reply.raw.end()
  })
  const res = await app.inject({ method: 'POST', url: '/items', payload: { name: 'apple' } })
  t.equal(res.statusCode, 500)
  // Without onResponse the transaction would stay open: wait for the rollback, then look.
  const stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 1 && s.active === 0)
  t.equal(onResponseRan(), 1, 'onResponse ran for the hijacked reply under inject')
  t.equal(stats.rollbacks, 1, 'rolled back')
  t.equal(stats.commits, 0)
  t.equal(stats.active, 0, 'the connection went back to the pool')
  t.equal(await db.idleInTransaction(), 0)
  t.same(await itemNames(db), [], 'the row is absent')
})

t.test('real server: a hijacked 200 commits, a hijacked 500 rolls back', async (t) => {
  const { db, app } = await setup(t)
  app.post('/items', async (request, reply) => {
    const { name, status } = request.body as { name: string, status: number }
    reply.hijack()
    await request.db.insertInto('items').values({ name }).execute()
    reply.raw.writeHead(status, { 'content-type': 'text/plain' })
    reply.raw.end('done')
  })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  const post = (body: object) => fetch(`${base}/items`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })

  const ok = await post({ name: 'apple', status: 200 })
  t.equal(ok.status, 200)
  t.equal(await ok.text(), 'done')
  t.same(await eventually(() => itemNames(db), (names) => names.length > 0), ['apple'], 'the 200 committed')

  const failed = await post({ name: 'pear', status: 500 })
  t.equal(failed.status, 500)
  await failed.text()
  const stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 1 && s.active === 0)
  t.equal(stats.commits, 1)
  t.equal(stats.rollbacks, 1, 'the 500 rolled back')
  t.equal(stats.active, 0)
  t.equal(await db.idleInTransaction(), 0)
  t.same(await itemNames(db), ['apple'], 'only the 200\'s row is present')
})

t.test('a hijacked 200 commits even when an async onResponse hook runs before the plugin\'s', async (t) => {
  // Metrics and logging plugins registered before this one add such hooks. By the time the
  // plugin's onResponse runs, a tick after 'finish', Node has marked every finished response
  // destroyed, which must not be mistaken for a client that went away.
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = Fastify()
  let earlierHookRan = 0
  app.addHook('onResponse', async () => { earlierHookRan++ })
  await app.register(dbSession, { connectionString: db.url })
  t.teardown(() => app.close())
  app.post('/items', async (request, reply) => {
    reply.hijack()
    await request.db.insertInto('items').values(request.body as { name: string }).execute()
    reply.raw.writeHead(200, { 'content-type': 'text/plain' })
    reply.raw.end('ok')
  })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })

  const viaInject = await app.inject({ method: 'POST', url: '/items', payload: { name: 'apple' } })
  t.equal(viaInject.statusCode, 200)
  let stats = await eventually(async () => app.db.stats(), (s) => s.commits + s.rollbacks === 1 && s.active === 0)
  t.equal(earlierHookRan, 1, 'the earlier onResponse hook ran')
  t.equal(stats.rollbacks, 0, 'inject: the 200 was not rolled back')
  t.equal(stats.commits, 1, 'inject: the 200 committed')
  t.same(await itemNames(db), ['apple'], 'inject: the row is present')

  const viaServer = await fetch(`${base}/items`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'pear' }) })
  t.equal(viaServer.status, 200)
  t.equal(await viaServer.text(), 'ok')
  stats = await eventually(async () => app.db.stats(), (s) => s.commits + s.rollbacks === 2 && s.active === 0)
  t.equal(stats.rollbacks, 0, 'real server: the 200 was not rolled back')
  t.equal(stats.commits, 2, 'real server: the 200 committed')
  t.equal(stats.active, 0)
  t.equal(await db.idleInTransaction(), 0)
  t.same(await itemNames(db), ['apple', 'pear'], 'real server: the row is present')
})

t.test('real server: a client hanging up on a hijacked reply rolls back', async (t) => {
  const { db, app } = await setup(t)
  const inserted = deferred()
  const go = deferred()
  const done = deferred<{ code?: string } | null>()
  let serverSocketClosed = false
  app.post('/items', async (request, reply) => {
    reply.hijack()
    request.raw.socket.once('close', () => { serverSocketClosed = true })
    await request.db.insertInto('items').values(request.body as { name: string }).execute()
    inserted.resolve()
    await go.promise
    let laterError: { code?: string } | null = null
    try {
      await request.db.insertInto('items').values({ name: 'later' }).execute()
    } catch (error) {
      laterError = error as { code?: string }
    }
    // Ends the response the client is no longer there to read: a 200 all the same.
    reply.raw.writeHead(200, { 'content-type': 'text/plain' })
    reply.raw.end('ok')
    done.resolve(laterError)
  })
  await app.listen({ port: 0, host: '127.0.0.1' })

  const { port } = app.server.address() as AddressInfo
  const socket = connect({ port, host: '127.0.0.1' })
  socket.on('error', () => {})
  const body = JSON.stringify({ name: 'apple' })
  socket.write(`POST /items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`)
  await inserted.promise
  t.equal(await db.idleInTransaction(), 1, 'the transaction is open while the handler waits')
  socket.destroy()
  await eventually(async () => serverSocketClosed, (closed) => closed)
  t.ok(serverSocketClosed, 'the server saw the client go')

  const stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 1 && s.active === 0)
  t.equal(stats.rollbacks, 1, 'the hang-up rolled back, before the handler wrote its response')
  t.equal(stats.active, 0)
  t.equal(await db.idleInTransaction(), 0)
  t.same(await itemNames(db), [])

  go.resolve()
  t.equal((await done.promise)?.code, 'FST_DB_SESSION_TRANSACTION_FINISHED', 'a query after the hang-up is refused')
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(await itemNames(db), [], 'the row is absent, and the later one too')
  t.equal(app.db.stats().commits, 0, 'the 200 written after the hang-up did not commit')
  t.equal(app.db.stats().rollbacks, 1)
  t.equal(app.db.stats().active, 0)
  t.equal(await db.idleInTransaction(), 0)
})

t.test('real server: a client gone before a hijacked handler\'s first query: that transaction still ends', async (t) => {
  // The hang-up comes before request.db is first used, so the 'close' it emits is already past
  // when the transaction opens; and a response ended on a destroyed socket never 'finish'es, so
  // onResponse does not run either.
  const { db, app } = await setup(t)
  const entered = deferred()
  const go = deferred()
  const done = deferred<{ code?: string } | null>()
  let serverSocketClosed = false
  app.post('/items', async (request, reply) => {
    reply.hijack()
    request.raw.socket.once('close', () => { serverSocketClosed = true })
    entered.resolve()
    await go.promise
    let error: { code?: string } | null = null
    try {
      await request.db.insertInto('items').values(request.body as { name: string }).execute()
    } catch (caught) {
      error = caught as { code?: string }
    }
    reply.raw.writeHead(200, { 'content-type': 'text/plain' })
    reply.raw.end('ok')
    done.resolve(error)
  })
  await app.listen({ port: 0, host: '127.0.0.1' })

  const { port } = app.server.address() as AddressInfo
  const socket = connect({ port, host: '127.0.0.1' })
  socket.on('error', () => {})
  const body = JSON.stringify({ name: 'apple' })
  socket.write(`POST /items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`)
  await entered.promise
  socket.destroy()
  await eventually(async () => serverSocketClosed, (closed) => closed)
  t.ok(serverSocketClosed, 'the server saw the client go')

  go.resolve()
  await done.promise
  // Either the insert was refused or it ran and must have been rolled back: never left open.
  const stats = await eventually(async () => app.db.stats(), (s) => s.active === 0, 1500)
  t.equal(stats.active, 0, 'the connection went back to the pool')
  t.equal(stats.commits, 0, 'nothing was committed for a client that was gone')
  t.equal(await db.idleInTransaction(), 0, 'no backend is left idle in transaction')
  t.same(await itemNames(db), [], 'the row is absent')
})
