// The test command's last step: a real PostgreSQL for the run (embedded, unless DATABASE_URL is
// set), then tap with DATABASE_URL pointing at it, then the server stopped whatever happened.
import { spawn } from 'node:child_process'
import { exitOnStartProblem, startEmbeddedPostgres } from '../examples/embedded-postgres.mjs'

let server = null
if (!process.env.DATABASE_URL) {
  server = await startEmbeddedPostgres().catch(exitOnStartProblem)
  process.env.DATABASE_URL = server.url
  console.log(`test: embedded PostgreSQL on 127.0.0.1:${server.port}`)
}

const tap = spawn(process.execPath, [new URL('../node_modules/.bin/tap', import.meta.url).pathname, ...process.argv.slice(2)], {
  stdio: 'inherit',
  env: process.env
})
const code = await new Promise((resolve) => tap.on('exit', (status, signal) => resolve(status ?? (signal ? 1 : 0))))
if (server !== null) await server.stop()
process.exit(code)
