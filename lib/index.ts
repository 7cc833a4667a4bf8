import fp from 'fastify-plugin'
import type { FastifyDbSession } from '../index.js'
import { errors, InvalidOptionError } from './errors.js'
import { prometheusText } from './prometheus.js'
import { dbSession } from './registration.js'

// Which file does what, and where each coming feature goes: README.md, "Architecture".

/** Several pools' metrics in one exposition (each metric's HELP and TYPE once, a sample per pool). */
function combineMetrics (...dbs: Array<Pick<FastifyDbSession<any>, 'name' | 'stats'>>): string {
  const names = new Set(dbs.map((db) => db.name))
  if (names.size !== dbs.length) {
    throw new InvalidOptionError(`combineMetrics: pool names must differ (give each plugin registration its own name option); got ${dbs.map((db) => db.name).join(', ')}`)
  }
  return prometheusText(dbs.map((db) => ({ name: db.name, stats: db.stats() })))
}

const fastifyDbSession = Object.assign(fp(dbSession, { fastify: '5.x', name: 'fastify-db-session' }), { errors, combineMetrics })

export default fastifyDbSession
export { fastifyDbSession, errors, combineMetrics, fastifyDbSession as 'module.exports' }
