// Health at the edges of a pool's life: the startup check with retries, and ping().
import t from 'tap'
import Fastify from 'fastify'
import pg from 'pg'
import dbSession from '../lib/index.js'
import { eventually, testDatabase } from './helpers/database.js'
import { startProxy } from './helpers/tcp-proxy.js'

t.test('startup check: a database that never answers fails registration with a coded error naming host and port, never the password', async (t) => {
  const db = await testDatabase(t)
  const proxy = await startProxy(t, db.url, 'down')
  const url = new URL(proxy.urlFor(db.url))
  url.password = 'hunter2-secret'
  const app = Fastify()
  const started = Date.now()
  const error = await app.register(dbSession, { connectionString: url.toString(), startupCheck: { retries: 3, delayMillis: 50 } }).ready().then(() => null, (e) => e)
  const elapsed = Date.now() - started
  t.equal(error?.code, 'FST_DB_SESSION_STARTUP_FAILED')
  t.match(error.message, new RegExp(`at 127\\.0\\.0\\.1:${proxy.port} after 4 attempts`))
  t.notMatch(error.message, /hunter2/, 'the password is not in the message')
  t.notMatch(JSON.stringify(error), /hunter2/, 'nor anywhere in the serialized error')
  t.ok(error.cause instanceof Error, 'the last connection error is the cause')
  t.equal(proxy.accepted, 4, 'one attempt and three retries reached the server')
  t.ok(elapsed >= 50 + 100 + 200, `the retries backed off exponentially (${elapsed} ms)`)
  await app.close()
})

t.test('startup check: a database that comes up during the retries lets registration succeed, leaving the pool empty', async (t) => {
  const db = await testDatabase(t)
  const proxy = await startProxy(t, db.url, 'down')
  setTimeout(() => { proxy.mode = 'up' }, 150).unref()
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { connectionString: proxy.urlFor(db.url), startupCheck: { retries: 6, delayMillis: 40 } })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  await app.ready()
  t.ok(proxy.accepted >= 2, `it retried until the database answered (${proxy.accepted} attempts)`)
  t.equal(app.db.stats().total, 0, 'the check\'s own connection is not kept in the pool')
  t.equal(await eventually(() => db.connections(), (n) => n === 0), 0, 'and it was closed')
  t.same((await app.inject('/')).json(), { one: 1 })
})

t.test('startup check: on by default; false registers without connecting', async (t) => {
  const db = await testDatabase(t)
  const proxy = await startProxy(t, db.url, 'down')
  const checked = Fastify()
  await t.rejects(async () => { await checked.register(dbSession, { connectionString: proxy.urlFor(db.url) }).ready() }, { code: 'FST_DB_SESSION_STARTUP_FAILED', message: /after 5 attempts/ })
  await checked.close()
  const before = proxy.accepted
  const unchecked = Fastify()
  await unchecked.register(dbSession, { connectionString: proxy.urlFor(db.url), startupCheck: false })
  await unchecked.ready()
  t.equal(proxy.accepted, before, 'no connection was attempted')
  await unchecked.close()
})

t.test('startup check: a user pool is checked with its own Client class and options', async (t) => {
  const db = await testDatabase(t)
  let made = 0
  class CountingClient extends pg.Client {
    constructor (config?: pg.ClientConfig) {
      super(config)
      made++
    }
  }
  const pool = new pg.Pool({ connectionString: db.url, Client: CountingClient })
  t.teardown(() => pool.end())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { pool })
  await app.ready()
  t.equal(made, 1, 'the check used the pool\'s Client class')
  t.equal(pool.totalCount, 0, 'and left the user\'s pool empty')
})

t.test('startupCheck options are checked', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    ['yes', /startupCheck must be true, false or an object like \{"retries":4,"delayMillis":250\}/],
    [{ retries: -1 }, /startupCheck\.retries must be an integer of at least 0/],
    [{ delayMillis: 1.5 }, /startupCheck\.delayMillis must be an integer/],
    [{ tries: 3 }, /unknown option 'startupCheck\.tries'; known are retries, delayMillis/]
  ]
  for (const [startupCheck, message] of cases) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(dbSession, { connectionString: 'postgres://127.0.0.1:1/none', startupCheck: startupCheck as never }).ready() }, { code: 'FST_DB_SESSION_INVALID_OPTION', message })
  }
})

t.test('ping(): the round trip in milliseconds, on a pooled connection given back afterwards', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  const millis = await app.db.ping()
  t.type(millis, 'number')
  t.ok(millis > 0 && millis < 2000, `${millis} ms`)
  const stats = app.db.stats()
  t.equal(stats.acquires, 1)
  t.equal(stats.active, 0, 'the connection went back')
  t.equal(stats.idle, 1, 'and stays pooled for the next ping')
  t.equal(stats.destroyed, 0)
})

t.test('ping(): a database that accepts but never answers fails at the timeout with 503 FST_DB_SESSION_PING_FAILED', async (t) => {
  const db = await testDatabase(t)
  const proxy = await startProxy(t, db.url, 'silent')
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { connectionString: proxy.urlFor(db.url), startupCheck: false })
  const started = Date.now()
  const error = await app.db.ping({ timeoutMillis: 200 }).then(() => null, (e) => e)
  const elapsed = Date.now() - started
  t.equal(error?.code, 'FST_DB_SESSION_PING_FAILED')
  t.equal(error.statusCode, 503)
  t.match(error.message, /no answer within 200 ms/)
  t.ok(elapsed >= 190 && elapsed < 1500, `it failed at the timeout (${elapsed} ms)`)
})

t.test('ping(): a pooled connection that stops answering is destroyed at the timeout, not returned', async (t) => {
  const db = await testDatabase(t)
  const proxy = await startProxy(t, db.url, 'up')
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { connectionString: proxy.urlFor(db.url), startupCheck: false })
  await app.db.ping()
  t.equal(app.db.stats().idle, 1, 'the first ping left a pooled connection')
  proxy.mode = 'silent'
  await t.rejects(app.db.ping({ timeoutMillis: 150 }), { code: 'FST_DB_SESSION_PING_FAILED' })
  const stats = app.db.stats()
  t.equal(stats.destroyed, 1, 'the silent connection was destroyed')
  t.equal(stats.total, 0, 'and is no longer pooled')
  proxy.mode = 'up'
  t.type(await app.db.ping(), 'number', 'the next ping opens a fresh connection')
})

t.test('ping(): bad timeouts are refused', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  await t.rejects(app.db.ping({ timeoutMillis: 0 }), { code: 'FST_DB_SESSION_INVALID_OPTION', message: /timeoutMillis must be an integer of at least 1/ })
  await t.rejects(app.db.ping({ timeoutMillis: 'soon' as never }), { code: 'FST_DB_SESSION_INVALID_OPTION' })
})
