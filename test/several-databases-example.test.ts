// The README's "Several databases" example as a user runs it: its own process, two databases, over HTTP.
import t from 'tap'
import { readFile } from 'node:fs/promises'
import { eventually, testDatabase } from './helpers/database.js'
import { startScript } from './helpers/util.js'

t.setTimeout(120_000)

t.test('the several-databases example writes to both databases in one request and reports each pool', async (t) => {
  const analytics = await testDatabase(t)
  const main = await testDatabase(t)
  const { port } = await startScript(t, 'examples/several-databases/app.ts', { DATABASE_URL: main.url, ANALYTICS_DATABASE_URL: analytics.url })
  const base = `http://127.0.0.1:${port}`

  const created = await fetch(`${base}/items`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'apple' }) })
  t.equal(created.status, 201)
  t.same(await created.json(), { id: 1, name: 'apple' })
  t.same((await main.query('SELECT id, name FROM items')).rows, [{ id: 1, name: 'apple' }])
  t.same((await analytics.query('SELECT kind, item_id FROM events')).rows, [{ kind: 'item created', item_id: 1 }])

  const report = await fetch(`${base}/report`)
  t.equal(report.status, 200)
  t.same(await report.json(), [{ kind: 'item created', count: 1 }])

  const metrics = await (await fetch(`${base}/metrics`)).text()
  t.match(metrics, /fastify_db_session_commits_total\{pool="default"\} 1\nfastify_db_session_commits_total\{pool="analytics"\} 2\n/,
    'the main pool committed the POST; the analytics pool the POST and the report')
  t.equal(await eventually(() => main.idleInTransaction(), (n) => n === 0), 0)
  t.equal(await eventually(() => analytics.idleInTransaction(), (n) => n === 0), 0)
})

t.test('the README\'s "Several databases" example is examples/several-databases/app.ts, character for character', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const block = /## Several databases\n[\s\S]*?```ts\n([\s\S]*?)```\n/.exec(readme)
  t.ok(block, 'the README has the example\'s code block')
  t.equal(block?.[1], await readFile(new URL('../examples/several-databases/app.ts', import.meta.url), 'utf8'))
})
