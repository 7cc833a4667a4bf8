// Server CPU per request of one select, in one process through fastify.inject, for the plugin
// and the two hand-written peers, alternating blocks; for profiling (node --cpu-prof) as well.
// `node --expose-gc --import tsx bench/profile-select.ts [requestsPerBlock] [blocks] [inFlight] [variants]`
// DATABASE_URL is used when set; otherwise an embedded PostgreSQL is started. FAKE_PG=1 replaces
// pg's Client (in the same pg-pool) by one answering every query a macrotask later: what is left
// is each variant's own JavaScript, without the database's noise.
import { createHook } from 'node:async_hooks'
import { EventEmitter } from 'node:events'
import { writeFile } from 'node:fs/promises'
import { Session } from 'node:inspector/promises'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import { Kysely, PostgresDialect } from 'kysely'
import pg from 'pg'
import fastifyPostgres from '@fastify/postgres'
import { startEmbeddedPostgres } from '../examples/embedded-postgres.mjs'
import { seedItems } from './seed.js'
import type pluginType from '../lib/index.js'
// DIST=1 measures the compiled plugin (what users run) instead of tsx's transpile of lib/.
const { default: dbSession } = await import(process.env.DIST === '1' ? '../dist/index.js' : '../lib/index.js') as { default: typeof pluginType }

const [blockText = '2000', blocksText = '10', inFlightText = '16', only] = process.argv.slice(2)
const BLOCK = Number(blockText)
const BLOCKS = Number(blocksText)
const IN_FLIGHT = Number(inFlightText)
const POOL = 10
const ROWS = 1000
const id = () => 1 + Math.floor(Math.random() * ROWS)

interface Database { items: { id: number, name: string } }

const FAKE = process.env.FAKE_PG === '1'

/** Just enough of pg.Client for pg-pool, Kysely, @fastify/postgres and the plugin. */
class FakeClient extends EventEmitter {
  readyForQuery = true
  _txStatus = 'I'
  _queryable = true
  _ending = false
  processID = 1
  connect (callback?: (error?: Error) => void): Promise<void> | undefined {
    if (callback === undefined) return new Promise((resolve) => setImmediate(resolve))
    setImmediate(callback)
  }

  isConnected (): boolean { return true }
  ref (): void {}
  unref (): void {}
  end (callback?: () => void): Promise<void> | undefined {
    this._ending = true
    setImmediate(() => this.emit('end'))
    if (callback === undefined) return Promise.resolve()
    setImmediate(callback)
  }

  query (text: string | FakeSubmittable, values?: unknown, callback?: (error: Error | null, result?: unknown) => void): Promise<unknown> | undefined {
    if (typeof text !== 'string') {
      // The plugin's BEGIN-with-query batch: answered with the query's result, as the other
      // variants' queries are, without pg's message handling (which the fake leaves out for all).
      this._txStatus = 'T'
      setImmediate(() => { text.callback(null, { command: 'SELECT', rowCount: 1, rows: [{ id: 1, name: 'item 1' }] }) })
      return
    }
    if (typeof values === 'function') callback = values as typeof callback
    const command = text.slice(0, text.search(/\s|;|$/)).toUpperCase()
    if (command === 'BEGIN') this._txStatus = 'T'
    else if (command === 'COMMIT' || command === 'ROLLBACK') this._txStatus = 'I'
    const result = { command, rowCount: command === 'SELECT' ? 1 : null, rows: command === 'SELECT' ? [{ id: 1, name: 'item 1' }] : [] }
    if (callback !== undefined) {
      setImmediate(callback, null, result)
      return
    }
    return new Promise((resolve) => setImmediate(resolve, result))
  }
}

interface FakeSubmittable {
  callback: (error: Error | null, result: unknown) => void
}

const fakePg = { ...pg, Pool: class extends pg.Pool { constructor (config: pg.PoolConfig) { super({ ...config, Client: FakeClient as never }) } } }
const poolConfig = (databaseUrl: string): pg.PoolConfig => FAKE ? { Client: FakeClient as never, max: POOL } : { connectionString: databaseUrl, max: POOL }

async function build (variant: string, databaseUrl: string): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  switch (variant) {
    case 'kysely-transaction': {
      const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: new pg.Pool(poolConfig(databaseUrl)) }) })
      app.get('/', async () => db.transaction().execute((trx) =>
        trx.selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst()))
      app.addHook('onClose', async () => db.destroy())
      break
    }
    case 'fastify-postgres':
      await app.register(fastifyPostgres, FAKE ? { pg: fakePg as never, max: POOL } : { connectionString: databaseUrl, max: POOL })
      app.get('/', { pg: { transact: true } }, async (request) => {
        const { rows } = await request.pg!.query('SELECT id, name FROM items WHERE id = $1', [id()])
        return rows[0]
      })
      break
    case 'plugin-select':
      await app.register(dbSession, FAKE ? { pool: { Client: FakeClient as never }, maxConnections: POOL } : { connectionString: databaseUrl, maxConnections: POOL })
      app.get('/', async (request) => (request.db as unknown as Kysely<Database>)
        .selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst())
      break
    case 'fastify-postgres-kysely': {
      // The floor for plugin-select: @fastify/postgres's transaction, the query built and compiled by Kysely.
      const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: new pg.Pool(poolConfig(databaseUrl)) }) })
      await app.register(fastifyPostgres, FAKE ? { pg: fakePg as never, max: POOL } : { connectionString: databaseUrl, max: POOL })
      app.get('/', { pg: { transact: true } }, async (request) => {
        const query = db.selectFrom('items').select(['id', 'name']).where('id', '=', id()).compile()
        const { rows } = await request.pg!.query(query.sql, query.parameters as unknown[])
        return rows[0]
      })
      break
    }
    case 'plugin-base': {
      // BASE_DIST=<directory of an earlier build>: that build beside this one, for an A/B comparison.
      const { default: base } = await import(new URL(`${process.env.BASE_DIST}/index.js`, `file://${process.cwd()}/`).href) as { default: typeof pluginType }
      await app.register(base, FAKE ? { pool: { Client: FakeClient as never }, maxConnections: POOL } : { connectionString: databaseUrl, maxConnections: POOL })
      app.get('/', async (request) => (request.db as unknown as Kysely<Database>)
        .selectFrom('items').select(['id', 'name']).where('id', '=', id()).executeTakeFirst())
      break
    }
    default:
      throw new Error(`unknown variant '${variant}'`)
  }
  await app.ready()
  return app
}

/** CPU microseconds per request over `BLOCK` requests, `IN_FLIGHT` at a time. */
async function measure (app: FastifyInstance): Promise<number> {
  globalThis.gc?.()
  let issued = 0
  const worker = async (): Promise<void> => {
    while (issued < BLOCK) {
      issued++
      const response = await app.inject('/')
      if (response.statusCode !== 200) throw new Error(`status ${response.statusCode}: ${response.body}`)
    }
  }
  const before = process.cpuUsage()
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker))
  const { user, system } = process.cpuUsage(before)
  return (user + system) / BLOCK
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

const embedded = process.env.DATABASE_URL || FAKE ? null : await startEmbeddedPostgres()
const databaseUrl = process.env.DATABASE_URL ?? embedded?.url ?? ''
try {
  if (!FAKE) await seedItems(databaseUrl)
  const names = only === undefined ? ['plugin-select', 'kysely-transaction', 'fastify-postgres'] : only.split(',')
  const apps = new Map<string, FastifyInstance>()
  for (const name of names) apps.set(name, await build(name, databaseUrl))
  const results = new Map<string, number[]>(names.map((name) => [name, []]))
  for (const app of apps.values()) await measure(app) // warm-up
  if (process.env.COUNT_ASYNC === '1') {
    // Async resources (promises, ticks, timers) created per request: a deterministic measure.
    for (const [name, app] of apps) {
      const counts: Record<string, number> = {}
      const sites = new Map<string, number>()
      const hook = createHook({
        init (_id, type) {
          counts[type] = (counts[type] ?? 0) + 1
          if (process.env.COUNT_SITES !== '1' || type !== 'PROMISE') return
          // Where it was made: the first frame outside Node's internals.
          const frames = (new Error().stack ?? '').split('\n').slice(2).filter((line) => !line.includes('node:'))
          const site = frames.slice(0, 2).map((line) => line.trim().replace(/^at /, '').replace(/\(.*\/(node_modules|wt-perf)\//, '(')).join(' < ')
          sites.set(site, (sites.get(site) ?? 0) + 1)
        }
      })
      hook.enable()
      await measure(app)
      hook.disable()
      console.log(name, Object.fromEntries(Object.entries(counts).map(([type, n]) => [type, Number((n / BLOCK).toFixed(2))])))
      for (const [site, n] of [...sites].sort((a, b) => b[1] - a[1]).slice(0, 40)) console.log(`  ${(n / BLOCK).toFixed(2)} ${site}`)
    }
  }
  if (process.env.HEAP_PROFILE !== undefined) {
    // Every allocation, sampled, including what the young generation's GC collected.
    const session = new Session()
    session.connect()
    for (const [name, app] of apps) {
      await session.post('HeapProfiler.startSampling', { samplingInterval: 128, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true } as never)
      await measure(app)
      const { profile } = await session.post('HeapProfiler.stopSampling')
      await writeFile(`${process.env.HEAP_PROFILE}-${name}.heapprofile`, JSON.stringify(profile))
    }
    session.disconnect()
  }
  const order = [...apps]
  for (let block = 0; block < BLOCKS; block++) {
    // Each variant takes each place in turn: what one block leaves behind falls on all alike.
    for (let i = 0; i < order.length; i++) {
      const [name, app] = order[(block + i) % order.length]
      results.get(name)!.push(await measure(app))
      if (process.env.HEAP_TRACE === '1') { globalThis.gc?.(); console.log(name, (process.memoryUsage().heapUsed / 1e6).toFixed(2), 'MB') }
    }
  }
  const table: Record<string, { cpuMicrosPerRequest: number }> = {}
  for (const [name, list] of results) table[name] = { cpuMicrosPerRequest: Number(median(list).toFixed(1)) }
  console.table(table)
  // Ratios of blocks run back to back, medianed: slow phases of a shared machine cancel out.
  const plugin = results.get('plugin-select')
  if (plugin !== undefined) {
    for (const peer of ['plugin-base', 'kysely-transaction', 'fastify-postgres']) {
      const other = results.get(peer)
      if (other !== undefined) console.log(`${peer} / plugin-select CPU: ${median(other.map((micros, i) => micros / plugin[i])).toFixed(3)}`)
    }
  }
  for (const app of apps.values()) await app.close()
} finally {
  await embedded?.stop()
}
