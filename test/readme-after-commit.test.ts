// The README's "After commit, savepoints and retries" example, run as written: its file is
// examples/after-commit/app.ts, character for character, and it prints what its comments say.
import t from 'tap'
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import { testDatabase } from './helpers/database.js'

const example = new URL('../examples/after-commit/app.ts', import.meta.url)

t.test('the README\'s after-commit example is examples/after-commit/app.ts, character for character', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const block = /<!-- after-commit-example -->\n```ts\n([\s\S]*?)```\n/.exec(readme)
  t.ok(block, 'the README has the example block')
  t.equal(block?.[1], await readFile(example, 'utf8'))
})

t.test('the after-commit example prints what its comments promise', async (t) => {
  const db = await testDatabase(t)
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', example.pathname], { env: { ...process.env, DATABASE_URL: db.url } })
  const source = await readFile(example, 'utf8')
  // Each console.log line's trailing comment, without a remark in parentheses: what that line prints.
  const promised = [...source.matchAll(/^console\.log\(.*\/\/ (.*?)(?: \(.*\))?$/gm)].map((match) => match[1])
  t.same(stdout.trim().split('\n'), promised)
  t.same((await db.query('SELECT sku FROM orders ORDER BY sku')).rows.map((row: { sku: string }) => row.sku), ['apple', 'nightly', 'pear', 'plum'])
})
