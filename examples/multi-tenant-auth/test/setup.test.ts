// Starting the service: the app role's password is made once and kept in the database, so a
// second instance on the same database (or a restart) leaves the first one working.
import { randomBytes } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import pg from 'pg'
import { testDatabase } from '../../../test/helpers/database.js'
import type { TestDatabase } from '../../../test/helpers/database.js'
import { buildApp } from '../app.js'
import type { App } from '../app.js'
import { prepareDatabase } from '../setup.js'
import { outboxMailer } from '../mailer.js'
import { currentUser, TEST_PASSWORD_COST } from './service.js'

async function database (t: Test): Promise<{ db: TestDatabase, appRole: string }> {
  const db = await testDatabase(t)
  const appRole = 'mt_app_' + db.name
  db.afterDrop((admin) => admin.query(`DROP ROLE IF EXISTS ${appRole}, ${appRole}_owner`))
  return { db, appRole }
}

async function start (t: Test, databaseUrl: string, outbox = tmpdir()): Promise<App> {
  const app = await buildApp({ databaseUrl, tokenSecret: randomBytes(32), mailer: outboxMailer(outbox), passwordCost: TEST_PASSWORD_COST })
  t.teardown(() => app.close())
  return app
}

function password (url: string): string {
  return decodeURIComponent(new URL(url).password)
}

t.test('a second instance started on the same database leaves the first one working', async (t) => {
  const { db, appRole } = await database(t)
  const firstUrl = await prepareDatabase(db.url, appRole)
  // buildApp's startup check connects with a client of its own: the pool stays empty, so the
  // request below needs a new connection, made with the first instance's password.
  const outbox = await mkdtemp(join(tmpdir(), 'mt-outbox-'))
  t.teardown(() => rm(outbox, { recursive: true, force: true }))
  const first = await start(t, firstUrl, outbox)
  const secondUrl = await prepareDatabase(db.url, appRole)
  const second = await start(t, secondUrl, outbox)
  t.equal(password(secondUrl), password(firstUrl), 'the second start read the same password')

  const signUp = await first.inject({ method: 'POST', url: '/tenants', payload: { name: 'First', email: 'ada@first.test' } })
  t.equal(signUp.statusCode, 202, `the first instance still reaches the database (${signUp.body.slice(0, 200)})`)
  const [mail] = await readdir(outbox)
  const token = /^Token: (\S+)$/m.exec(await readFile(join(outbox, mail), 'utf8'))![1]
  const joined = await second.inject({ method: 'POST', url: '/invitations/accept', payload: { token, password: 'correct horse battery' } })
  t.equal(joined.statusCode, 200, 'the second one serves the same data')
  const login = await first.inject({ method: 'POST', url: '/login', payload: { tenantId: joined.json().tenant.id, email: 'ada@first.test', password: 'correct horse battery' } })
  t.equal(login.statusCode, 200, 'and the first one too')
  t.equal(await currentUser(firstUrl), appRole, 'a new connection with the first URL authenticates')
  t.equal(first.db.stats().acquireTimeouts, 0)
})

t.test('starts at the same time are serialized: one creates the role, the others read its password', async (t) => {
  const { db, appRole } = await database(t)
  const urls = await Promise.all(Array.from({ length: 4 }, () => prepareDatabase(db.url, appRole)))
  t.equal(new Set(urls.map(password)).size, 1, 'all four got the same password')
  t.equal(await currentUser(urls[0]), appRole, 'and it is the role\'s')
  t.same((await db.query('SELECT role FROM app_private.role_passwords')).rows, [{ role: appRole }], 'one kept password')
  t.same((await db.query("SELECT count(*)::int AS n FROM kysely_migration WHERE name LIKE '00%'")).rows[0].n > 0, true, 'migrated once, without error')
})

t.test('a role from before passwords were kept gets a new one, kept from then on', async (t) => {
  const { db, appRole } = await database(t)
  await db.query(`CREATE ROLE ${appRole} LOGIN PASSWORD 'an old password'`)
  const firstUrl = await prepareDatabase(db.url, appRole)
  t.not(password(firstUrl), 'an old password', 'a new password')
  t.equal(await currentUser(firstUrl), appRole, 'set on the role')
  const secondUrl = await prepareDatabase(db.url, appRole)
  t.equal(password(secondUrl), password(firstUrl), 'and read back at the next start')
})

t.test('the app role cannot read the kept password', async (t) => {
  const { db, appRole } = await database(t)
  const url = await prepareDatabase(db.url, appRole)
  t.equal((await db.query('SELECT password FROM app_private.role_passwords WHERE role = $1', [appRole])).rows[0].password, password(url),
    'the owner can')
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  t.teardown(() => client.end())
  await t.rejects(client.query('SELECT password FROM app_private.role_passwords'), { code: '42501', message: /permission denied for schema app_private/ },
    'the app role is refused the schema')
  await t.rejects(client.query('CREATE TABLE app_private.mine (x int)'), { code: '42501' }, 'and cannot create anything in it')
  const privileges = await client.query(`SELECT has_schema_privilege(n.oid, 'USAGE') AS usage, has_table_privilege(c.oid, 'SELECT') AS can_select
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'app_private' AND c.relname = 'role_passwords'`)
  t.same(privileges.rows, [{ usage: false, can_select: false }], 'no privilege on the schema or the table')
})
