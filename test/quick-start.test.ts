// The quick start as a user runs it: `npm start`'s server as its own process, over HTTP.
import t from 'tap'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { testDatabase } from './helpers/database.js'
import { startScript } from './helpers/util.js'

t.test('the quick-start server commits, rolls back a duplicate, and reports its pool', async (t) => {
  const db = await testDatabase(t)
  const { server, port, output } = await startScript(t, 'examples/quick-start/server.ts', { DATABASE_URL: db.url })
  t.match(output, `listening on http://127.0.0.1:${port}`)
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
  t.equal(duplicate.status, 409, 'a duplicate name is a conflict')
  t.same(await duplicate.json(), { message: 'an item with this name exists' }, 'said without PostgreSQL\'s text')
  t.same(await (await fetch(`${base}/items`)).json(), [{ id: 1, name: 'apple' }])
  t.same((await db.query('SELECT count(*)::int AS n FROM items')).rows, [{ n: 1 }], 'one row, as before')
  const health = await (await fetch(`${base}/health`)).json()
  t.match(health, { active: 0, commits: 2, rollbacks: 1 })
  t.same((await db.query('SELECT name FROM items')).rows, [{ name: 'apple' }])

  server.kill('SIGTERM')
  const [code] = await once(server, 'exit')
  t.equal(code, 0, 'shuts down cleanly on SIGTERM')
  t.equal(await db.connections(), 0, 'and leaves no connection behind')
})

t.test('the README\'s quick start is examples/quick-start/app.ts, character for character', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const block = /## Quick start\n\n```ts\n([\s\S]*?)```\n/.exec(readme)
  t.ok(block, 'the README has a quick-start code block')
  t.equal(block?.[1], await readFile(new URL('../examples/quick-start/app.ts', import.meta.url), 'utf8'))
})
