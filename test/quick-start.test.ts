// The quick start as a user runs it: `npm start`'s server as its own process, over HTTP.
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { freePort } from '../examples/embedded-postgres.mjs'
import { testDatabase } from './helpers/database.js'

t.test('the quick-start server commits, rolls back a duplicate, and reports its pool', async (t) => {
  const db = await testDatabase(t)
  const port = await freePort()
  const server = spawn(process.execPath, ['--import', 'tsx', 'examples/quick-start/server.ts'], {
    env: { ...process.env, DATABASE_URL: db.url, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  t.teardown(async () => {
    if (server.exitCode === null) {
      server.kill('SIGTERM')
      await once(server, 'exit')
    }
  })
  let output = ''
  for await (const chunk of server.stdout) {
    output += chunk
    if (output.includes('listening on')) break
  }
  t.match(output, `quick-start listening on http://127.0.0.1:${port}`)
  const base = `http://127.0.0.1:${port}`
  const post = (name: string) => fetch(`${base}/items`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name })
  })

  const created = await post('apple')
  t.equal(created.status, 201)
  t.same(await created.json(), { id: 1, name: 'apple' })
  const duplicate = await post('apple')
  t.equal(duplicate.status, 500)
  t.same(await (await fetch(`${base}/items`)).json(), [{ id: 1, name: 'apple' }])
  const health = await (await fetch(`${base}/health`)).json()
  t.match(health, { active: 0, commits: 2, rollbacks: 1 })
  t.same((await db.query('SELECT name FROM items')).rows, [{ name: 'apple' }])

  server.kill('SIGTERM')
  const [code] = await once(server, 'exit')
  t.equal(code, 0, 'shuts down cleanly on SIGTERM')
  t.equal(await db.connections(), 0, 'and leaves no connection behind')
})
