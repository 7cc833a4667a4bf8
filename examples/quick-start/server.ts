// npm run quick-start: the README's quick start (app.ts, exactly as the README shows it) on an
// embedded PostgreSQL, or on DATABASE_URL when it is set.
import { exitOnStartProblem, startEmbeddedPostgres } from '../embedded-postgres.mjs'

const embedded = process.env.DATABASE_URL ? null : await startEmbeddedPostgres().catch(exitOnStartProblem)
if (embedded !== null) process.env.DATABASE_URL = embedded.url
// app.ts prints where it listens, last: tests read up to that line and close the pipe.
const { app } = await import('./app.js')

async function shutdown (): Promise<void> {
  await app.close()
  await embedded?.stop()
  process.exit(0)
}
process.once('SIGINT', shutdown)
process.once('SIGTERM', shutdown)
