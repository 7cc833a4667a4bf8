// Type tests of the read replica options, route setting, transaction option and stats.
import Fastify from 'fastify'
import type { FastifyContextConfig } from 'fastify'
import pg from 'pg'
import dbSession, { errors } from 'fastify-db-session'
import type { DbReplicaStats } from 'fastify-db-session'

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false
function expectTrue<T extends true> (_proof?: T): void {}

const app = Fastify()
await app.register(dbSession, {
  connectionString: 'postgres://localhost/app',
  replicas: ['postgres://replica-1/app', { host: 'replica-2', database: 'app', max: 5 }, new pg.Pool()],
  replicaWaitMillis: 200,
  maxReplicaLagMillis: 2000,
  replicaCheckMillis: 500,
  lsnFrom: (request) => request.headers['x-lsn'] as string | undefined
})
// @ts-expect-error replicas is a list, not one connection string
await app.register(dbSession, { connectionString: 'postgres://localhost/app', replicas: 'postgres://replica/app' })
// @ts-expect-error lsnFrom returns the position as text
await app.register(dbSession, { connectionString: 'postgres://localhost/app', replicas: [], lsnFrom: () => 42 })

const pinned: FastifyContextConfig = { db: { accessMode: 'read only', replica: false } }
// @ts-expect-error replica is a boolean
const badPinned: FastifyContextConfig = { db: { replica: 'no' } }

await app.db.transaction(async () => 1, { accessMode: 'read only', lsn: '0/16B3748' })
await app.db.transaction(async () => 1, { accessMode: 'read only', replica: false })

const stats = app.db.stats()
expectTrue<Equal<typeof stats.role, 'primary' | 'replica'>>()
expectTrue<Equal<typeof stats.replicas, DbReplicaStats[]>>()
expectTrue<Equal<typeof stats.replicaFallbacks, { down: number, lag: number, waitTimedOut: number, ahead: number }>>()
type Replica = typeof stats.replicas[number]
expectTrue<Equal<Replica['leftOut'], 'down' | 'lag' | null>>()
expectTrue<Equal<Replica['lsn'], string | null>>()
expectTrue<Equal<InstanceType<typeof errors.FST_DB_SESSION_INVALID_POSITION>['statusCode'], 400>>()

export { pinned, badPinned, stats }
