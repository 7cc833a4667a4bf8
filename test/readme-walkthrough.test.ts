// The README's walk-through, run as written (bash and curl) against `npm start`'s server, reading
// its tokens from the outbox folder, again and again: until the sign-up and acceptance limits
// refuse a run, which must stop at once and say so.
import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { testDatabase } from './helpers/database.js'
import { startScript } from './helpers/util.js'

// Each run starts a dozen short node processes and hashes four passwords at production cost.
t.setTimeout(240_000)

/** Runs before the limits (10 sign-ups and 10 acceptances a window per address) refuse one: 3 acceptances a run. */
const RUNS_ALLOWED = 3

t.test('the README walk-through works as written, re-run until the rate limit, which it reports', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const block = /<!-- walkthrough -->\n```sh\n([\s\S]*?)```\n<!-- \/walkthrough -->/.exec(readme)
  t.ok(block, 'the README has the walk-through block')
  const db = await testDatabase(t)
  const role = 'mt_app_' + db.name
  db.afterDrop((admin) => admin.query(`DROP ROLE IF EXISTS ${role}, ${role}_owner`))
  const outbox = await mkdtemp(join(tmpdir(), 'mt-walkthrough-outbox-'))
  t.teardown(() => rm(outbox, { recursive: true, force: true }))
  const { port, output } = await startScript(t, 'examples/multi-tenant-auth/server.ts', {
    DATABASE_URL: db.url,
    APP_DB_ROLE: role,
    MAIL_OUTBOX: outbox,
    // Ten minutes instead of one: however slow the machine, the runs below fall in one window.
    RATE_LIMIT_WINDOW_SECONDS: '600'
  })
  t.match(output, `multi-tenant-auth listening on http://127.0.0.1:${port}`)

  const run = (): Promise<{ code: number, stdout: string, stderr: string }> =>
    promisify(execFile)('bash', ['-c', block![1]], { env: { ...process.env, BASE: `http://127.0.0.1:${port}`, MAIL_OUTBOX: outbox } })
      .then(({ stdout, stderr }) => ({ code: 0, stdout, stderr }))
      .catch((error: { code: number, stdout: string, stderr: string }) => ({ code: error.code, stdout: error.stdout, stderr: error.stderr }))

  // Against the same server: from the second run on, Ada's, Bob's and Hank's accounts are there.
  for (let i = 1; i <= RUNS_ALLOWED; i++) {
    await t.test(`run ${i}`, async (t) => {
      const { code, stdout, stderr } = await run()
      t.same([code, stderr], [0, ''], 'exits 0, with nothing on stderr')
      const lines = stdout.trim().split('\n')
      t.equal(lines[0], 'to confirm, accept the invitation mailed to ada@acme.test')
      t.match(lines[1], /^tenant [0-9a-f-]{36}$/)
      t.match(JSON.parse(lines[2]), { user: { email: 'bob@acme.test' }, tenant: { id: lines[1].slice('tenant '.length), name: 'Acme' }, role: 'member' })
      t.match(JSON.parse(lines[3]), { title: 'Plan', body: 'ship it' })
      t.match(JSON.parse(lines[4]), [{ title: 'Plan', body: 'ship it' }])
      t.equal(JSON.parse(lines[4]).length, 1, 'the new Acme has this run\'s note only')
      t.same(JSON.parse(lines[5]), [], 'Globex sees none of Acme\'s notes')
      t.equal(lines[6], 'refresh: 200')
      t.match(JSON.parse(lines[7]), { code: 'REFRESH_TOKEN_REUSED' })
      t.match(JSON.parse(lines[8]), { code: 'SESSION_ENDED' }, 'the reuse ended Bob\'s access token too')
      t.match(JSON.parse(lines[9]), { statusCode: 400, message: "body must have required property 'title'" })
      t.match(JSON.parse(lines[10]), { status: 'ok', pingMillis: Number, pool: { active: 0 } })
      t.equal(lines.length, 11)
    })
  }
  const mails = (await readdir(outbox)).filter((name) => name.endsWith('.eml'))
  t.equal(mails.length, RUNS_ALLOWED * 3, 'three mails a run in the outbox: Ada\'s and Hank\'s sign-ups, Bob\'s invitation')

  await t.test(`run ${RUNS_ALLOWED + 1}, over the limit: stops at the refused call and says why`, async (t) => {
    const { code, stdout, stderr } = await run()
    t.not(code, 0, 'exits with an error')
    t.match(stderr, /^POST \/invitations\/accept answered 429: \{.*"message":"Rate limit exceeded, retry in [^"]+"\}\n$/, `one line on stderr: ${stderr}`)
    t.notMatch(stdout + stderr, /TypeError|undefined/, 'no TypeError, no undefined token')
    t.equal(stdout.trim().split('\n').length, 2, 'after the sign-up\'s and the tenant\'s lines, nothing more ran')
  })
})
