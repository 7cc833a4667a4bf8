// The server side of `npm run soak`, in a process of its own so that its memory is measured alone:
// `node --expose-gc --import tsx bench/soak-server.ts <port> <databaseUrl> <maxConnections> <handlerTimeoutMillis>`.
// Every /soak route first inserts its request's id into `ledger` through request.db, then meets
// the fate its name says. The driver (bench/soak.ts) then checks which rows were committed.
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { sql } from 'kysely'
import type { Kysely } from 'kysely'
import pg from 'pg'
import dbSession from '../lib/index.js'

interface Database { ledger: { id: number, fate: string } }
type Params = { Params: { id: string } }

const [portText, databaseUrl, poolText, handlerTimeoutText] = process.argv.slice(2)
const HANDLER_TIMEOUT = Number(handlerTimeoutText)
/** How long the timeout route stalls after its insert: well past its handlerTimeout. */
const STALL = HANDLER_TIMEOUT * 3
/** The longest the abort route waits for its client to hang up. */
const ABORT_WAIT_CAP = 5000

const counters = {
  inflight: 0,
  handled: 0,
  /** What a query sent after the finish (a hang-up, a timeout) met, by error code; 'ran' if it ran. */
  lateQueries: {} as Record<string, number>,
  /** pg_terminate_backend calls that did not report the backend gone. */
  killMissed: 0,
  /** Abort routes whose client never hung up within ABORT_WAIT_CAP. */
  abortNeverCame: 0,
  uncaught: 0,
  /** Warnings and errors logged by Fastify and the plugin, by level and message. */
  logged: {} as Record<string, number>
}

function count (table: Record<string, number>, key: string): void {
  table[key] = (table[key] ?? 0) + 1
}

const levels: Record<number, string> = { 40: 'warn', 50: 'error', 60: 'fatal' }
const app = Fastify({
  logger: {
    level: 'warn',
    stream: {
      write (line: string) {
        const { level, msg, err } = JSON.parse(line) as { level: number, msg: string, err?: { code?: string } }
        // Numbers (ids in URLs, durations) left out, so that one kind of message is one line.
        count(counters.logged, `${levels[level] ?? level}: ${msg.replace(/\d+/g, 'N')}${err?.code ? ` (${err.code})` : ''}`)
      }
    }
  },
  forceCloseConnections: true
})
for (const event of ['uncaughtException', 'unhandledRejection'] as const) {
  process.on(event, (error) => {
    counters.uncaught++
    const text = (error as Error)?.stack ?? String(error)
    count(counters.logged, `${event}: ${text.split('\n')[0]}`)
    // The first few in full, on stderr (the driver's), to find where they come from.
    if (counters.uncaught <= 5) process.stderr.write(`soak server: ${event}: ${text}\n`)
  })
}

await app.register(dbSession, { connectionString: databaseUrl, maxConnections: Number(poolText) })

// A connection outside the plugin's pool, to terminate backends the way an operator or a failover would.
const control = new pg.Pool({ connectionString: databaseUrl, max: 4 })
control.on('error', () => {})
/**
 * Terminates a backend and returns once it is gone. (pg_terminate_backend's own wait, since
 * PostgreSQL 14, checks in steps of 100 ms: too slow for thousands of kills.)
 */
async function terminate (pid: number): Promise<boolean> {
  const { rows: [{ signalled }] } = await control.query<{ signalled: boolean }>('SELECT pg_terminate_backend($1) AS signalled', [pid])
  if (!signalled) return false
  const end = Date.now() + 5000
  while (Date.now() < end) {
    const { rows: [{ alive }] } = await control.query<{ alive: boolean }>('SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1) AS alive', [pid])
    if (!alive) return true
    await sleep(1)
  }
  return false
}

const db = (request: FastifyRequest): Kysely<Database> => request.db as unknown as Kysely<Database>

async function insert (request: FastifyRequest<Params>, fate: string): Promise<number> {
  const id = Number(request.params.id)
  await db(request).insertInto('ledger').values({ id, fate }).execute()
  return id
}

/** A query after the transaction finished: it must be refused, never run. */
async function lateQuery (request: FastifyRequest, id: number): Promise<void> {
  try {
    await db(request).insertInto('ledger').values({ id: -id, fate: 'late' }).execute()
    count(counters.lateQueries, 'ran')
  } catch (error) {
    count(counters.lateQueries, (error as { code?: string }).code ?? (error as Error).message)
  }
}

function closed (reply: FastifyReply, cap: number): Promise<boolean> {
  if (reply.raw.destroyed) return Promise.resolve(true)
  return new Promise((resolve) => {
    const onClose = (): void => {
      clearTimeout(timer)
      resolve(true)
    }
    const timer = setTimeout(() => {
      reply.raw.removeListener('close', onClose)
      resolve(false)
    }, cap)
    reply.raw.once('close', onClose)
  })
}

/** A handler counted while it runs: the driver waits for none to be running before its checks. */
function counted<R> (handler: (request: FastifyRequest<Params>, reply: FastifyReply) => Promise<R>) {
  return async (request: FastifyRequest<Params>, reply: FastifyReply): Promise<R> => {
    counters.inflight++
    counters.handled++
    try {
      return await handler(request, reply)
    } finally {
      counters.inflight--
    }
  }
}

app.post<Params>('/soak/ok/:id', counted(async (request, reply) => {
  const id = await insert(request, 'ok')
  return id % 3 === 0 ? reply.code(201).send({ id }) : { id }
}))

app.post<Params>('/soak/throw/:id', counted(async (request) => {
  await insert(request, 'throw')
  throw new Error('soak: the handler threw')
}))

app.post<Params>('/soak/status/:id', counted(async (request, reply) => {
  const id = await insert(request, 'status')
  return reply.code(422).send({ id, error: 'soak: refused without throwing' })
}))

app.post<Params>('/soak/abort/:id', counted(async (request, reply) => {
  const id = await insert(request, 'abort')
  // A 103 tells the client the row is in: it hangs up while this handler still waits 20-50 ms.
  reply.writeEarlyHints({ link: '</soak>; rel=preload' })
  const [, came] = await Promise.all([sleep(20 + Math.random() * 30), closed(reply, ABORT_WAIT_CAP)])
  if (!came) counters.abortNeverCame++
  if (id % 2 === 0) await lateQuery(request, id)
  return { id } // a success, for a client that is gone: must not commit
}))

app.post<Params>('/soak/timeout/:id', { handlerTimeout: HANDLER_TIMEOUT }, counted(async (request, reply) => {
  const id = await insert(request, 'timeout')
  await sleep(STALL)
  if (id % 2 === 0) await lateQuery(request, id)
  // Long after the 503: returning the reply (not a payload) only spares Fastify's "already sent" warning.
  return reply.sent ? reply : { id }
}))

// The timeout fires while the handler's query still runs: the plugin's onError hook waits for that
// query, then rolls back; the handler resumes as soon as the query ends, inside that window.
app.post<Params>('/soak/timeout-query/:id', { handlerTimeout: HANDLER_TIMEOUT }, counted(async (request, reply) => {
  const id = await insert(request, 'timeout-query')
  await sql`SELECT pg_sleep(${STALL / 1000})`.execute(db(request))
  return reply.sent ? reply : { id }
}))

app.post<Params>('/soak/kill/:id', counted(async (request) => {
  const id = await insert(request, 'kill')
  const { rows: [{ pid }] } = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(db(request))
  if (!await terminate(pid)) counters.killMissed++
  // Half meet the dead backend with their next query, half only at COMMIT.
  if (id % 2 === 0) await sql`SELECT 1`.execute(db(request))
  return { id }
}))

app.get('/__stats', { config: { db: false } }, async () => ({ db: app.db.stats(), counters }))

app.get('/__memory', { config: { db: false } }, async () => {
  // Twice: the first pass can leave work (weak references, finalizers) for the second.
  globalThis.gc?.()
  globalThis.gc?.()
  return { gc: typeof globalThis.gc === 'function', ...process.memoryUsage() }
})

let closing: Promise<void> | null = null
function shutdown (): Promise<void> {
  closing ??= (async () => {
    let code = 0
    try {
      await app.close()
    } catch (error) {
      count(counters.logged, `close: ${(error as Error).message}`)
      code = 1
    }
    await control.end().catch(() => {})
    process.stdout.write(`final ${JSON.stringify({ db: app.db.stats(), counters })}\n`, () => process.exit(code))
  })()
  return closing
}
process.once('SIGTERM', shutdown)
// The driver holds our stdin: when it goes away, so do we.
process.stdin.on('end', shutdown).resume()

await app.listen({ host: '127.0.0.1', port: Number(portText) })
console.log('ready')
