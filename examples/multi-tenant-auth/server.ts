// npm start: the multi-tenant auth service. PostgreSQL is DATABASE_URL's (used as the owner for
// migrations), or an embedded one whose data lives in ./data (git-ignored; DATA_DIR elsewhere)
// across restarts. With OTEL_EXPORTER_OTLP_ENDPOINT set, traces go there (telemetry.ts).
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { buildApp } from './app.js'
import { outboxMailer } from './mailer.js'
import { prepareDatabase } from './setup.js'
import { startTelemetry } from './telemetry.js'

const DATABASE = 'multi_tenant_auth'

async function embeddedOwnerUrl (): Promise<{ url: string, stop: () => Promise<void> }> {
  const { exitOnStartProblem, startEmbeddedPostgres } = await import('../embedded-postgres.mjs')
  const databaseDir = process.env.DATA_DIR ?? fileURLToPath(new URL('./data', import.meta.url))
  // A folder PostgreSQL's user cannot reach, or one another instance holds: said, and exit 1.
  const server = await startEmbeddedPostgres({ databaseDir, persistent: true }).catch(exitOnStartProblem)
  const admin = new pg.Client({ connectionString: server.url })
  await admin.connect()
  const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [DATABASE])
  if (rowCount === 0) await admin.query(`CREATE DATABASE ${DATABASE}`)
  await admin.end()
  const url = new URL(server.url)
  url.pathname = '/' + DATABASE
  return { url: url.toString(), stop: server.stop }
}

// First: the app made below is then instrumented from its start.
const stopTelemetry = await startTelemetry()
const embedded = process.env.DATABASE_URL ? null : await embeddedOwnerUrl()
const ownerUrl = process.env.DATABASE_URL ?? embedded!.url
const databaseUrl = await prepareDatabase(ownerUrl, process.env.APP_DB_ROLE ?? 'mt_app')
// Hot standbys of that server (comma-separated), reached as the app role: the read routes run there.
const replicaUrls = (process.env.DATABASE_REPLICA_URL ?? '').split(',').filter((url) => url !== '').map((replica) => {
  const url = new URL(replica)
  const app = new URL(databaseUrl)
  url.username = app.username
  url.password = app.password
  return url.toString()
})
// Access tokens last minutes; refresh tokens live in the database and survive a restart.
const tokenSecret = process.env.TOKEN_SECRET ? Buffer.from(process.env.TOKEN_SECRET, 'base64url') : randomBytes(32)
// Mail is written to a folder (see mailer.ts): ./outbox (git-ignored; outside PostgreSQL's own data folder) unless MAIL_OUTBOX names another.
const outbox = process.env.MAIL_OUTBOX ?? fileURLToPath(new URL('./outbox', import.meta.url))
// The window of the login, sign-up and acceptance limits: 60 s unless RATE_LIMIT_WINDOW_SECONDS says.
const window = process.env.RATE_LIMIT_WINDOW_SECONDS
if (window !== undefined && !/^[1-9]\d*$/.test(window)) throw new Error(`RATE_LIMIT_WINDOW_SECONDS: expected a whole number of seconds, got '${window}'`)
const loginWindowMillis = window === undefined ? undefined : Number(window) * 1000
const app = await buildApp({ databaseUrl, replicaUrls, tokenSecret, mailer: outboxMailer(outbox), loginWindowMillis, logger: process.env.LOG === '1' })
const address = await app.listen({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
console.log(`multi-tenant-auth listening on ${address}`)

async function shutdown (): Promise<void> {
  await app.close()
  // Exports the spans still in its batch.
  await stopTelemetry?.()
  await embedded?.stop()
  process.exit(0)
}
process.once('SIGINT', shutdown)
process.once('SIGTERM', shutdown)
