// preparedStatements behind a pooler that hands one server connection to several processes
// (PgBouncer before 1.21 in transaction mode, or later ones without max_prepared_statements):
// another process's statement left on a server connection must never run in place of ours.
// In a file of its own: the statement names depend on what the process prepared before.
import { spawn } from 'node:child_process'
import t from 'tap'
import { sql } from 'kysely'
import pg from 'pg'
import { testDatabase } from './helpers/database.js'
import { deferred } from './helpers/util.js'
import { pgbouncerBinary, startPgBouncer } from './helpers/pgbouncer.js'

t.setTimeout(120_000)

const missing = pgbouncerBinary() === null
if (missing && process.env.CI) throw new Error('CI is set but pgbouncer is not installed: .ci/run must apt-get install -y pgbouncer')
const skip = missing ? 'pgbouncer is not installed (apt-get install -y pgbouncer); PgBouncer test not run' : false

/** Another process with the plugin (the built one), which runs one named query through `url` and prints its row. */
async function otherProcess (url: string): Promise<{ name: string, pid: number }> {
  const script = `
    const { default: Fastify } = await import('fastify')
    const { sql } = await import('kysely')
    const { default: dbSession } = await import(process.env.PLUGIN)
    const app = Fastify()
    await app.register(dbSession, { connectionString: process.env.URL, maxConnections: 1, preparedStatements: true, startupCheck: false })
    app.get('/', async (request) => (await sql\`SELECT secret AS name, pg_backend_pid() AS pid FROM secrets WHERE id = \${1}\`.execute(request.db)).rows[0])
    process.stdout.write((await app.inject('/')).body)
    await app.close()
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    cwd: new URL('..', import.meta.url).pathname,
    env: { ...process.env, URL: url, PLUGIN: new URL('../dist/index.js', import.meta.url).href },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  let out = ''
  child.stdout.on('data', (chunk) => { out += chunk })
  const code = await new Promise((resolve) => child.on('exit', resolve))
  if (code !== 0) throw new Error(`the other process exited with ${String(code)}: ${out}`)
  return JSON.parse(out)
}

t.test('a statement another process left on the server connection never runs as ours', { skip }, async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)')
  await db.query("INSERT INTO items VALUES (1, 'apple')")
  await db.query('CREATE TABLE secrets (id int PRIMARY KEY, secret text NOT NULL)')
  await db.query("INSERT INTO secrets VALUES (1, 'the secret')")
  const bouncer = await startPgBouncer(t, db.url, 2)
  const url = bouncer.urlFor(db.url)
  const app = await db.app({ connectionString: url, maxConnections: 1, preparedStatements: true, startupCheck: false }, { logger: { level: 'silent' } })
  const holding = deferred()
  const held = deferred<number>()
  app.get('/items/:id', async (request) => {
    const id = Number((request.params as { id: string }).id)
    const row = await request.db.selectFrom('items').select('name').where('id', '=', id).executeTakeFirst()
    const { rows } = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(request.db)
    if (request.headers['x-hold'] !== undefined) {
      held.resolve(rows[0].pid)
      await holding.promise
    }
    return { name: row?.name ?? null, pid: rows[0].pid }
  })

  // Ours prepared on server connection A, held while the other process runs its query on B.
  const first = app.inject({ url: '/items/1', headers: { 'x-hold': '1' } })
  const a = await held.promise
  const other = await otherProcess(url)
  t.equal(other.name, 'the secret')
  t.not(other.pid, a, 'the other process ran on the other server connection')
  holding.resolve()
  t.same((await first).json(), { name: 'apple', pid: a })

  // Both server connections taken by two more clients; the one on B lets go: ours gets B.
  const holders = [new pg.Client({ connectionString: url }), new pg.Client({ connectionString: url })]
  t.teardown(() => Promise.all(holders.map((client) => client.end())))
  const pids: number[] = []
  for (const client of holders) {
    await client.connect()
    await client.query('BEGIN')
    pids.push((await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)
  }
  t.same([...pids].sort(), [a, other.pid].sort())
  await holders[pids.indexOf(other.pid)].query('COMMIT')

  const response = await app.inject('/items/1')
  t.not(response.json().name, 'the secret', 'never the other process\'s statement')
  if (response.statusCode === 200) {
    t.same(response.json(), { name: 'apple', pid: other.pid }, 'a pooler that keeps statements apart')
  } else {
    t.match(response.json(), { code: '26000' }, 'a pooler that does not: "prepared statement does not exist", as the docs say')
  }
  await holders[pids.indexOf(a)].query('COMMIT')
})
