// npm start: the quick-start app on an embedded PostgreSQL (or DATABASE_URL), on 127.0.0.1.
import { startEmbeddedPostgres } from '../embedded-postgres.mjs'
import { buildApp } from './app.js'

const embedded = process.env.DATABASE_URL ? null : await startEmbeddedPostgres()
const app = await buildApp(process.env.DATABASE_URL ?? embedded!.url)
const address = await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
console.log(`quick-start listening on ${address} (try: curl -X POST ${address}/items -H 'content-type: application/json' -d '{"name":"apple"}')`)

async function shutdown (): Promise<void> {
  await app.close()
  await embedded?.stop()
  process.exit(0)
}
process.once('SIGINT', shutdown)
process.once('SIGTERM', shutdown)
