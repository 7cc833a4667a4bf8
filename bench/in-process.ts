// Per-request time and heap of a route that never touches the database, with and without the
// plugin registered, through fastify.inject in one process, alternating blocks.
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import dbSession from './plugin.js'

const BLOCK = 2000
const BLOCKS = 6

async function measure (app: FastifyInstance): Promise<{ micros: number, bytes: number }> {
  globalThis.gc?.()
  const heapBefore = process.memoryUsage().heapUsed
  const start = process.hrtime.bigint()
  for (let i = 0; i < BLOCK; i++) await app.inject('/')
  const micros = Number(process.hrtime.bigint() - start) / 1000 / BLOCK
  // Without a GC in between (a large young generation is asked for), heap growth ≈ allocation.
  const bytes = (process.memoryUsage().heapUsed - heapBefore) / BLOCK
  return { micros, bytes }
}

export async function inProcessOverhead (databaseUrl: string): Promise<Record<string, { microsPerRequest: number, bytesPerRequest: number }>> {
  const bare = Fastify()
  bare.get('/', async () => ({ ok: true }))
  const withPlugin = Fastify()
  await withPlugin.register(dbSession, { connectionString: databaseUrl })
  withPlugin.get('/', async () => ({ ok: true }))
  await Promise.all([bare.ready(), withPlugin.ready()])
  const results = { bare: [] as Array<{ micros: number, bytes: number }>, plugin: [] as Array<{ micros: number, bytes: number }> }
  await measure(bare)
  await measure(withPlugin)
  for (let i = 0; i < BLOCKS; i++) {
    results.bare.push(await measure(bare))
    results.plugin.push(await measure(withPlugin))
  }
  await bare.close()
  await withPlugin.close()
  const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
  const row = (list: Array<{ micros: number, bytes: number }>) => ({
    microsPerRequest: Number(median(list.map((r) => r.micros)).toFixed(2)),
    bytesPerRequest: Math.round(median(list.map((r) => r.bytes)))
  })
  const bareRow = row(results.bare)
  const pluginRow = row(results.plugin)
  return {
    bare: bareRow,
    plugin: pluginRow,
    'plugin / bare': {
      microsPerRequest: Number((pluginRow.microsPerRequest / bareRow.microsPerRequest).toFixed(3)),
      bytesPerRequest: Number((pluginRow.bytesPerRequest / bareRow.bytesPerRequest).toFixed(3))
    }
  }
}
