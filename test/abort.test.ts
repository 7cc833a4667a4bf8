// A client that hangs up mid-request must never leave work behind: the socket's 'close' rolls the
// transaction back at once (not when the handler gets round to returning), the connection goes
// back to the pool, and the handler's later queries fail instead of running outside it.
import { connect } from 'node:net'
import type { Socket } from 'node:net'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import type { Test } from 'tap'
import { sql } from 'kysely'
import type { FastifyInstance } from 'fastify'
import { eventually, testDatabase } from './helpers/database.js'
import { deferred, itemNames } from './helpers/util.js'
import type { TestDatabase } from './helpers/database.js'

/** Sends one raw HTTP/1.1 request to 127.0.0.1 and keeps the socket for the test to destroy. */
async function rawRequest (app: FastifyInstance, method: string, url: string, body?: string): Promise<{ socket: Socket, received: () => string }> {
  const { port } = app.server.address() as AddressInfo
  const socket = connect({ port, host: '127.0.0.1' })
  let data = ''
  socket.setEncoding('utf8')
  socket.on('data', (chunk: string) => { data += chunk })
  socket.on('error', () => {})
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', reject)
  })
  const headers = [`${method} ${url} HTTP/1.1`, 'Host: 127.0.0.1']
  if (body !== undefined) headers.push('Content-Type: application/json', `Content-Length: ${Buffer.byteLength(body)}`)
  socket.write(headers.join('\r\n') + '\r\n\r\n' + (body ?? ''))
  return { socket, received: () => data }
}

/** Connections of this database running a pg_sleep right now. */
async function sleeping (db: TestDatabase): Promise<number> {
  const result = await db.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query LIKE 'select pg_sleep%'",
    [db.name]
  )
  return result.rows[0].n
}

interface Outcome { laterError: { code?: string } | null, laterInserted: boolean }

/**
 * A route that inserts, tells the test, waits for the test's go, then tries a second insert and
 * answers 200: the handler of an ordinary request that outlives its client.
 */
function stallingRoute (app: FastifyInstance, method: 'GET' | 'POST') {
  const inserted = deferred()
  const go = deferred()
  const done = deferred<Outcome>()
  let serverSocketClosed = false
  app.route({
    method,
    url: '/items',
    handler: async (request) => {
      const name = method === 'POST' ? (request.body as { name: string }).name : 'from-get'
      request.raw.socket.once('close', () => { serverSocketClosed = true })
      await request.db.insertInto('items').values({ name }).execute()
      inserted.resolve()
      await go.promise
      const outcome: Outcome = { laterError: null, laterInserted: false }
      try {
        await request.db.insertInto('items').values({ name: 'later' }).execute()
        outcome.laterInserted = true
      } catch (error) {
        outcome.laterError = error as { code?: string }
      }
      done.resolve(outcome)
      return { ok: true }
    }
  })
  return { inserted, go, done, closed: () => serverSocketClosed }
}

async function hangUpMidRequest (t: Test, method: 'GET' | 'POST'): Promise<void> {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app()
  const route = stallingRoute(app, method)
  await app.listen({ port: 0, host: '127.0.0.1' })

  const client = await rawRequest(app, method, '/items', method === 'POST' ? JSON.stringify({ name: 'apple' }) : undefined)
  await route.inserted.promise
  // The transaction is open and holds the row: one connection, checked out, inside a transaction.
  t.equal(app.db.stats().active, 1, 'the request holds a connection')
  t.equal(await db.idleInTransaction(), 1, 'its transaction is open while the handler waits')

  client.socket.destroy()
  await eventually(async () => route.closed(), (closed) => closed)
  t.ok(route.closed(), 'the server saw the client go')

  // Rolled back by the hang-up itself: the handler is still waiting and has not returned.
  const stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 1 && s.active === 0)
  t.equal(stats.rollbacks, 1, 'the hang-up rolled the transaction back')
  t.equal(stats.aborts, 1, 'counted as an abort')
  t.equal(stats.commits, 0, 'nothing committed')
  t.equal(stats.active, 0, 'the connection went back to the pool while the handler still waits')
  t.equal(stats.destroyed, 0, 'the rolled-back connection was clean and returned, not destroyed')
  t.equal(await db.idleInTransaction(), 0, 'no backend is left idle in transaction')
  t.same(await itemNames(db), [], 'the row is absent')

  route.go.resolve()
  const outcome = await route.done.promise
  t.equal(outcome.laterError?.code, 'FST_DB_SESSION_TRANSACTION_FINISHED', 'a query after the hang-up is refused')
  t.notOk(outcome.laterInserted, 'the later insert did not run')

  // Let the handler's reply go through onSend/onResponse before looking again.
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(await itemNames(db), [], 'neither the first row nor the later one exists: nothing was autocommitted')
  const after = app.db.stats()
  t.equal(after.commits, 0, 'the handler returning 200 afterwards did not commit')
  t.equal(after.rollbacks, 1, 'the transaction finished once')
  t.equal(after.active, 0)
  t.equal(after.acquires, 1, 'the later query did not check out a connection of its own')
  t.equal(await db.idleInTransaction(), 0)
  t.equal(client.received(), '', 'the client, gone, received nothing')
}

t.test('a client hanging up on a POST rolls back its transaction at once', async (t) => {
  await hangUpMidRequest(t, 'POST')
})

t.test('a client hanging up on a GET rolls back its transaction at once', async (t) => {
  await hangUpMidRequest(t, 'GET')
})

t.test('a hang-up during a running query rolls back once that query ends', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app()
  const sleepStarted = deferred()
  const done = deferred<{ sleepResolved: boolean, laterError: { code?: string } | null }>()
  let serverSocketClosed = false
  app.post('/items', async (request) => {
    request.raw.socket.once('close', () => { serverSocketClosed = true })
    await request.db.insertInto('items').values(request.body as { name: string }).execute()
    const sleep = sql`select pg_sleep(0.5)`.execute(request.db)
    sleepStarted.resolve()
    let sleepResolved = false
    try {
      await sleep
      sleepResolved = true
    } catch {}
    let laterError: { code?: string } | null = null
    try {
      await request.db.insertInto('items').values({ name: 'later' }).execute()
    } catch (error) {
      laterError = error as { code?: string }
    }
    done.resolve({ sleepResolved, laterError })
    return { ok: true }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })

  const client = await rawRequest(app, 'POST', '/items', JSON.stringify({ name: 'apple' }))
  await sleepStarted.promise
  t.equal(await eventually(() => sleeping(db), (n) => n === 1), 1, 'the query is running in PostgreSQL')
  const hungUpAt = Date.now()
  client.socket.destroy()
  await eventually(async () => serverSocketClosed, (closed) => closed)
  t.ok(serverSocketClosed, 'the server saw the client go')

  // The query still runs on the connection: the rollback waits for it, the connection stays out.
  t.equal(await sleeping(db), 1, 'the query is still running after the hang-up')
  t.equal(app.db.stats().rollbacks, 0, 'no ROLLBACK was sent in the middle of the running query')
  t.equal(app.db.stats().active, 1, 'the connection is still checked out while its query runs')

  const stats = await eventually(async () => app.db.stats(), (s) => s.rollbacks === 1 && s.active === 0)
  t.ok(Date.now() - hungUpAt >= 200, 'the connection came back only once the query ended')
  t.equal(stats.rollbacks, 1, 'rolled back after the query')
  t.equal(stats.commits, 0)
  t.equal(stats.active, 0, 'the connection went back to the pool')
  t.equal(await sleeping(db), 0)
  t.equal(await db.idleInTransaction(), 0, 'no backend is left idle in transaction')
  t.same(await itemNames(db), [], 'the row inserted before the query is absent')

  const outcome = await done.promise
  t.ok(outcome.sleepResolved, 'the running query itself completed')
  t.equal(outcome.laterError?.code, 'FST_DB_SESSION_TRANSACTION_FINISHED', 'the next query is refused')
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(await itemNames(db), [], 'nothing was committed or autocommitted afterwards')
  t.equal(app.db.stats().commits, 0)
  t.equal(app.db.stats().rollbacks, 1)
  t.equal(app.db.stats().active, 0)
  t.equal(await db.idleInTransaction(), 0)
})
