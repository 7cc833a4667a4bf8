// The README's walk-through, run as written (bash and curl) against `npm start`'s server.
import t from 'tap'
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import { testDatabase } from './helpers/database.js'
import { startScript } from './helpers/util.js'

t.test('the README walk-through works as written', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const block = /<!-- walkthrough -->\n```sh\n([\s\S]*?)```\n<!-- \/walkthrough -->/.exec(readme)
  t.ok(block, 'the README has the walk-through block')
  const db = await testDatabase(t)
  const role = 'mt_app_' + db.name
  db.afterDrop((admin) => admin.query(`DROP ROLE IF EXISTS ${role}, ${role}_owner`))
  const { port, output } = await startScript(t, 'examples/multi-tenant-auth/server.ts', { DATABASE_URL: db.url, APP_DB_ROLE: role })
  t.match(output, `multi-tenant-auth listening on http://127.0.0.1:${port}`)

  // Twice against the same server: the second run finds Ada's, Bob's and Hank's accounts there.
  for (const run of ['first', 'second']) {
    await t.test(`the ${run} run`, async (t) => {
      const { stdout } = await promisify(execFile)('bash', ['-euo', 'pipefail', '-c', block![1]], {
        env: { ...process.env, BASE: `http://127.0.0.1:${port}` }
      })
      const lines = stdout.trim().split('\n')
      t.match(lines[0], /^tenant [0-9a-f-]{36}$/)
      t.match(JSON.parse(lines[1]), { user: { email: 'bob@acme.test' }, tenant: { id: lines[0].slice('tenant '.length), name: 'Acme' }, role: 'member' })
      t.match(JSON.parse(lines[2]), { title: 'Plan', body: 'ship it' })
      t.match(JSON.parse(lines[3]), [{ title: 'Plan', body: 'ship it' }])
      t.equal(JSON.parse(lines[3]).length, 1, 'the new Acme has this run\'s note only')
      t.same(JSON.parse(lines[4]), [], 'Globex sees none of Acme\'s notes')
      t.equal(lines[5], 'refresh: 200')
      t.match(JSON.parse(lines[6]), { code: 'REFRESH_TOKEN_REUSED' })
      t.match(JSON.parse(lines[7]), { statusCode: 400, message: "body must have required property 'title'" })
      t.match(JSON.parse(lines[8]), { status: 'ok', pingMillis: Number, pool: { active: 0 } })
      t.equal(lines.length, 9)
    })
  }
})
