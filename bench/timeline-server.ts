// One server for `bench/timeline.ts`: GET / as the variant does it, with the time of each step of
// each request kept in this process (µs after onRequest): each statement batch handed to pg
// (`sentN`), each ReadyForQuery received (`answeredN`), the handler's start and its query's
// result, the response's end. GET /__timeline returns the medians since the last call.
// `node --import tsx bench/timeline-server.ts <variant> <port> <databaseUrl>`
import Fastify from 'fastify'
import type { FastifyRequest } from 'fastify'
import type { Kysely } from 'kysely'
import pg from 'pg'
import fastifyPostgres from '@fastify/postgres'
import dbSession from './plugin.js'
import type { beginWithQuery as BeginWithQuery } from '../lib/begin-with-query.js'

// The compiled module, as the plugin runs it (see plugin.ts).
const compiled = '../dist/begin-with-query.js'
const { beginWithQuery } = await import(compiled) as { beginWithQuery: typeof BeginWithQuery }

const [variant, portText, databaseUrl] = process.argv.slice(2)
const POOL = 10
const SQL = 'SELECT id, name FROM items WHERE id = $1'
const id = (): number => 1 + Math.floor(Math.random() * 1000)
interface Database { items: { id: number, name: string } }

const steps = new Map<string, number[]>()
/** onRequest's time of the request being served (one at a time), or null between requests. */
let started: bigint | null = null
let batches = 0
function mark (step: string): void {
  if (started === null) return
  const list = steps.get(step) ?? []
  list.push(Number(process.hrtime.bigint() - started) / 1000)
  steps.set(step, list)
}

// Every batch pg writes, and every answer it reads, whoever sends them: the same for every variant.
const query = pg.Client.prototype.query
pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
  mark(`sent${++batches}`)
  return (query as (...a: unknown[]) => unknown).apply(this, args)
} as typeof query
const clientPrototype = pg.Client.prototype as unknown as { _handleReadyForQuery: (...a: unknown[]) => unknown }
const readyForQuery = clientPrototype._handleReadyForQuery
clientPrototype._handleReadyForQuery = function (this: unknown, ...args: unknown[]) {
  // Not a new connection's first ReadyForQuery (the pool connecting), which answers no batch.
  if (batches > 0) mark(`answered${batches}`)
  return readyForQuery.apply(this, args)
}

function run (client: pg.PoolClient, text: string, values: unknown[] = [], name?: string): Promise<pg.QueryResult> {
  return new Promise((resolve, reject) => {
    client.query({ text, values, name }, (error: Error | null, result: pg.QueryResult) => { if (error === null) resolve(result); else reject(error) })
  })
}

const app = Fastify({ logger: false })
app.addHook('onRequest', (_request, _reply, done) => { started = process.hrtime.bigint(); batches = 0; done() })
app.addHook('onResponse', (_request, _reply, done) => { mark('responded'); started = null; done() })
const select = async (request: FastifyRequest): Promise<unknown> => {
  mark('handler')
  const row = await (request.db as unknown as Kysely<Database>).selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst()
  mark('result')
  return row
}
const readOnly = { config: { db: { accessMode: 'read only', autocommit: true } } } as const
const pool = new pg.Pool({ connectionString: databaseUrl, max: POOL })
switch (variant) {
  case 'fastify-postgres':
    await app.register(fastifyPostgres, { connectionString: databaseUrl, max: POOL })
    app.get('/', { pg: { transact: true } }, async (request) => {
      mark('handler')
      const { rows } = await request.pg!.query(SQL, [id()])
      mark('result')
      return rows[0]
    })
    break
  case 'plugin-select':
  case 'plugin-select-prepared':
    await app.register(dbSession, { connectionString: databaseUrl, maxConnections: POOL, preparedStatements: variant.endsWith('prepared') })
    app.get('/', select)
    break
  case 'plugin-readonly-autocommit':
  case 'plugin-readonly-autocommit-prepared':
    await app.register(dbSession, { connectionString: databaseUrl, maxConnections: POOL, preparedStatements: variant.endsWith('prepared') })
    app.get('/', readOnly, select)
    break
  case 'pg-three-round-trips':
  case 'pg-batch':
  case 'pg-single':
  case 'pg-single-prepared':
    // Hand-written pg, nothing else: BEGIN, select, COMMIT apart; BEGIN with the select in one
    // batch, then COMMIT (the plugin's protocol); the select alone, unnamed or prepared.
    app.get('/', async () => {
      mark('handler')
      const client = await pool.connect()
      try {
        if (variant === 'pg-three-round-trips') await run(client, 'BEGIN')
        const result = variant === 'pg-batch'
          ? await beginWithQuery(client, ['BEGIN'], SQL, [id()])
          : await run(client, SQL, [id()], variant === 'pg-single-prepared' ? 'select_item' : undefined)
        mark('result')
        if (variant === 'pg-three-round-trips' || variant === 'pg-batch') await run(client, 'COMMIT')
        return result.rows[0]
      } finally {
        client.release()
      }
    })
    break
  default:
    throw new Error(`unknown variant '${variant}'`)
}
app.get('/__timeline', { config: { db: false } }, async () => {
  const medians: Record<string, number> = {}
  for (const [step, list] of steps) medians[step] = Math.round(list.sort((a, b) => a - b)[Math.floor(list.length / 2)])
  steps.clear()
  return medians
})
await app.listen({ host: '127.0.0.1', port: Number(portText) })
console.log('ready')
process.once('SIGTERM', () => { Promise.all([app.close(), pool.end()]).then(() => process.exit(0), () => process.exit(1)) })
