// The README's retries example as a user runs it: its own process, on its own database.
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import t from 'tap'
import { testDatabase } from './helpers/database.js'

// Starts the example as its own process: on a loaded machine longer than tap's default 30 s.
t.setTimeout(90_000)

t.test('examples/retries/transfers.ts: concurrent transfers all end 201, the money is all there', async (t) => {
  const db = await testDatabase(t)
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'examples/retries/transfers.ts'], {
    env: { ...process.env, DATABASE_URL: db.url },
    timeout: 60_000
  })
  const [statuses, totals] = stdout.trim().split('\n')
  t.equal(statuses, '201 201 201 201', 'every transfer succeeded, the conflicting ones after a retry')
  t.match(totals, /^total 200, \d+ retries$/)
  t.same((await db.query('SELECT name, balance FROM accounts ORDER BY name')).rows,
    [{ name: 'alice', balance: 100 }, { name: 'bob', balance: 100 }], 'two transfers each way: the balances are back where they began')
})

t.test('the README\'s retries example is examples/retries/transfers.ts, character for character', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const block = /### Retries\n[\s\S]*?```ts\n([\s\S]*?)```\n/.exec(readme)
  t.ok(block, 'the README has a retries code block')
  t.equal(block?.[1], await readFile(new URL('../examples/retries/transfers.ts', import.meta.url), 'utf8'))
})
