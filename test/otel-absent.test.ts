// Without @opentelemetry/api installed (the optional peer), the plugin loads, serves and pays
// nothing for tracing: run in a process where every @opentelemetry/* package is unresolvable.
import { spawn } from 'node:child_process'
import t from 'tap'
import { testDatabase } from './helpers/database.js'

const fixture = new URL('./fixtures/without-otel-api/', import.meta.url)

t.test('no @opentelemetry/api: one attempt to import it, requests work; an explicit tracerProvider is refused', async (t) => {
  const db = await testDatabase(t)
  // The test runner's own flags (its TypeScript loader, its coverage): the child's lines count as this file's.
  const child = spawn(process.execPath, [...process.execArgv, '--import', new URL('hide.mjs', fixture).pathname, new URL('app.ts', fixture).pathname], {
    env: { ...process.env, DATABASE_URL: db.url },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const code = await new Promise((resolve) => child.on('exit', resolve))
  t.equal(code, 0, stderr)
  const report = JSON.parse(stdout)
  t.same(report.body, { one: 1 })
  t.equal(report.status, 200)
  t.equal(report.commits, 1)
  t.same(stderr.trim().split('\n'), ['refused @opentelemetry/api'], 'the API was looked for once, for both registrations, and nothing else of OpenTelemetry')
  t.equal(report.refused?.code, 'FST_DB_SESSION_INVALID_OPTION')
  t.match(report.refused?.message, /openTelemetry\.tracerProvider needs @opentelemetry\/api.*npm install @opentelemetry\/api/)
})
