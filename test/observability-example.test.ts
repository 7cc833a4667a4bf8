// examples/observability/server.ts, the README's Observability example, run as a user runs it: its
// own process, prom-client's scrape over HTTP, OpenTelemetry's console export at shutdown.
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { testDatabase } from './helpers/database.js'
import { freePort } from '../examples/embedded-postgres.mjs'

t.test('the example serves the plugin\'s metrics beside prom-client\'s, and exports them to OpenTelemetry', async (t) => {
  const db = await testDatabase(t)
  const port = await freePort()
  const server = spawn(process.execPath, ['--import', 'tsx', 'examples/observability/server.ts'], {
    env: { ...process.env, DATABASE_URL: db.url, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  t.teardown(() => { if (server.exitCode === null) server.kill('SIGKILL') })
  // All of stdout, read to the end (the console exporter writes at shutdown).
  let output = ''
  server.stdout.setEncoding('utf8')
  server.stdout.on('data', (chunk: string) => { output += chunk })
  while (!output.includes('listening on')) {
    if (server.exitCode !== null) t.fail(`the example exited: ${output}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const base = `http://127.0.0.1:${port}`
  for (let i = 0; i < 2; i++) t.equal((await fetch(`${base}/now`)).status, 200)
  const scrape = await (await fetch(`${base}/metrics`)).text()
  t.match(scrape, /^fastify_db_session_commits_total\{pool="default"\} 2$/m, 'two commits, in prom-client\'s scrape')
  t.match(scrape, /^# TYPE process_cpu_user_seconds_total counter$/m, 'beside prom-client\'s default metrics')

  server.kill('SIGTERM')
  const [code] = await once(server, 'exit')
  t.equal(code, 0, 'shuts down cleanly on SIGTERM')
  t.match(output, "name: 'db.client.connection.count'", 'the console exporter printed the connection count')
  t.match(output, "name: 'fastify_db_session.commits'", 'and our counters')
  t.equal(await db.connections(), 0, 'no connection left behind')
})

t.test('the README\'s Observability example is examples/observability/server.ts, character for character', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const block = /<!-- observability-example -->\n```ts\n([\s\S]*?)```\n<!-- \/observability-example -->/.exec(readme)
  t.ok(block, 'the README has the Observability example block')
  t.equal(block?.[1], await readFile(new URL('../examples/observability/server.ts', import.meta.url), 'utf8'))
})
