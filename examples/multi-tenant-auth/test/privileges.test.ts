// What the app role can do in the database, attacked from the inside (SQL as the app role): it
// cannot make itself more than it is, holds exactly the privileges listed here, and reads no
// password hash. The migrations run as an owner role that is not a superuser.
import t from 'tap'
import type { Test } from 'tap'
import { Kysely, PostgresDialect } from 'kysely'
import pg from 'pg'
import { testDatabase } from '../../../test/helpers/database.js'
import { migrate } from '../migrations.js'
import { hashWithSettings } from '../passwords.js'
import { prepareDatabase } from '../setup.js'
import { signUp, startService } from './service.js'

/** Every privilege `role` holds in the current database, directly, through PUBLIC or through a role it belongs to. */
const PRIVILEGES_SQL = `
  WITH role AS (SELECT $1::regrole AS oid),
  app_schemas AS (
    SELECT oid FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%'
  ),
  table_privileges AS (
    SELECT unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']
      || CASE WHEN current_setting('server_version_num')::int >= 170000 THEN ARRAY['MAINTAIN'] ELSE ARRAY[]::text[] END) AS privilege
  )
  SELECT format('%s ON TABLE %s', p.privilege, c.oid::regclass) AS privilege
    FROM pg_class c, table_privileges p, role
    WHERE c.relnamespace IN (SELECT oid FROM app_schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND has_table_privilege(role.oid, c.oid, p.privilege)
  UNION ALL
  SELECT format('%s (%s) ON TABLE %s', p.privilege, a.attname, c.oid::regclass)
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped,
      (VALUES ('SELECT'), ('INSERT'), ('UPDATE'), ('REFERENCES')) AS p (privilege), role
    WHERE c.relnamespace IN (SELECT oid FROM app_schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND has_column_privilege(role.oid, c.oid, a.attnum, p.privilege) AND NOT has_table_privilege(role.oid, c.oid, p.privilege)
  UNION ALL
  SELECT format('%s ON SEQUENCE %s', p.privilege, c.oid::regclass)
    FROM pg_class c, (VALUES ('USAGE'), ('SELECT'), ('UPDATE')) AS p (privilege), role
    WHERE c.relnamespace IN (SELECT oid FROM app_schemas) AND c.relkind = 'S' AND has_sequence_privilege(role.oid, c.oid, p.privilege)
  UNION ALL
  SELECT format('EXECUTE ON FUNCTION %s', f.oid::regprocedure)
    FROM pg_proc f, role WHERE f.pronamespace IN (SELECT oid FROM app_schemas) AND has_function_privilege(role.oid, f.oid, 'EXECUTE')
  UNION ALL
  SELECT format('%s ON SCHEMA %s', p.privilege, n.nspname)
    FROM pg_namespace n, (VALUES ('USAGE'), ('CREATE')) AS p (privilege), role
    WHERE n.nspname NOT LIKE 'pg\\_temp%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp%' AND has_schema_privilege(role.oid, n.oid, p.privilege)
  UNION ALL
  SELECT format('%s ON DATABASE (this one)', p.privilege)
    FROM (VALUES ('CONNECT'), ('CREATE'), ('TEMPORARY')) AS p (privilege), role
    WHERE has_database_privilege(role.oid, current_database(), p.privilege)
  UNION ALL
  SELECT format('MEMBER OF %s', m.roleid::regrole) FROM pg_auth_members m, role WHERE m.member = role.oid
  UNION ALL
  SELECT format('DEFAULT PRIVILEGE %s', d.defaclacl) FROM pg_default_acl d, role, aclexplode(d.defaclacl) x WHERE x.grantee = role.oid
  UNION ALL
  SELECT attribute FROM pg_roles r, role, LATERAL (VALUES
    ('SUPERUSER', r.rolsuper), ('CREATEROLE', r.rolcreaterole), ('CREATEDB', r.rolcreatedb), ('LOGIN', r.rolcanlogin),
    ('REPLICATION', r.rolreplication), ('BYPASSRLS', r.rolbypassrls)) AS a (attribute, held)
    WHERE r.oid = role.oid AND a.held
  ORDER BY 1
`

const EXPECTED_PRIVILEGES = [
  'CONNECT ON DATABASE (this one)',
  'DELETE ON TABLE memberships',
  'DELETE ON TABLE notes',
  'DELETE ON TABLE refresh_tokens',
  'DELETE ON TABLE tenants',
  'EXECUTE ON FUNCTION app_tenant()',
  'EXECUTE ON FUNCTION app_user()',
  'EXECUTE ON FUNCTION create_user(text,text)',
  'EXECUTE ON FUNCTION password_matches(uuid,text)',
  'EXECUTE ON FUNCTION password_settings(uuid)',
  'EXECUTE ON FUNCTION user_id_by_email(text)',
  'INSERT ON TABLE invitations',
  'INSERT ON TABLE memberships',
  'INSERT ON TABLE notes',
  'INSERT ON TABLE refresh_tokens',
  'INSERT ON TABLE tenants',
  'LOGIN',
  'SELECT (created_at) ON TABLE users',
  'SELECT (email) ON TABLE users',
  'SELECT (id) ON TABLE users',
  'SELECT ON TABLE invitations',
  'SELECT ON TABLE memberships',
  'SELECT ON TABLE notes',
  'SELECT ON TABLE refresh_tokens',
  'SELECT ON TABLE tenants',
  'UPDATE ON TABLE invitations',
  'UPDATE ON TABLE memberships',
  'UPDATE ON TABLE notes',
  'UPDATE ON TABLE refresh_tokens',
  'UPDATE ON TABLE tenants',
  'USAGE ON SCHEMA information_schema',
  'USAGE ON SCHEMA pg_catalog',
  'USAGE ON SCHEMA public'
]

async function appClient (t: Test, url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  t.teardown(() => client.end())
  return client
}

/** The role's attributes, as the catalog has them. */
const ATTRIBUTES_SQL = 'SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = $1'
const PLAIN_ROLE = { rolsuper: false, rolcreaterole: false, rolcreatedb: false, rolreplication: false, rolbypassrls: false }

t.test('a temporary table with a trigger, named like a table the owner\'s functions use, gets the app role nothing', async (t) => {
  const { db, appDatabaseUrl, appRole } = await startService(t)
  const client = await appClient(t, appDatabaseUrl)
  const attack = [
    'CREATE TEMP TABLE users (id uuid DEFAULT gen_random_uuid(), email text, password_hash text)',
    `CREATE FUNCTION pg_temp.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN EXECUTE format('ALTER ROLE %I SUPERUSER CREATEROLE BYPASSRLS', session_user); RETURN NEW; END $$`,
    'CREATE TRIGGER escalate BEFORE INSERT ON pg_temp.users FOR EACH ROW EXECUTE FUNCTION pg_temp.escalate()'
  ]
  await t.rejects(client.query(attack[0]), { code: '42501', message: /permission denied to create temporary tables/ },
    'the app role may not create temporary tables')
  await t.rejects(client.query(attack[1]), { code: '42501' }, 'nor functions in pg_temp')

  // Were TEMP granted back by mistake, the functions' search_path still ends with pg_temp.
  await db.query(`GRANT TEMPORARY ON DATABASE ${db.name} TO ${appRole}`)
  const again = await appClient(t, appDatabaseUrl)
  for (const statement of attack) await again.query(statement)
  const { rows } = await again.query("SELECT create_user('victim@example.test', 'scrypt$1$1$1$salt$key') AS id")
  t.ok(rows[0].id, 'create_user made an account')
  t.same((await again.query("SELECT user_id_by_email('victim@example.test') AS id")).rows, rows, 'user_id_by_email finds it')
  t.same((await again.query('SELECT count(*)::int AS n FROM pg_temp.users')).rows, [{ n: 0 }], 'the temporary table was never written to')
  t.same((await db.query('SELECT email FROM users WHERE id = $1', [rows[0].id])).rows, [{ email: 'victim@example.test' }], 'the real table was')
  t.same((await db.query(ATTRIBUTES_SQL, [appRole])).rows, [PLAIN_ROLE], 'and the app role is what it was')
  await again.query('SELECT password_settings($1), password_matches($1, $2)', [rows[0].id, 'x'])
  t.same((await db.query(ATTRIBUTES_SQL, [appRole])).rows, [PLAIN_ROLE], 'the password functions change nothing either')

  const definers = (await db.query(`SELECT p.oid::regprocedure AS name, r.rolsuper, p.proconfig
    FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner WHERE p.prosecdef ORDER BY 1`)).rows
  t.same(definers.map((f) => String(f.name)).sort(),
    ['create_user(text,text)', 'password_matches(uuid,text)', 'password_settings(uuid)', 'user_id_by_email(text)'], 'the SECURITY DEFINER functions')
  for (const f of definers) {
    t.equal(f.rolsuper, false, `${f.name} runs as a role that is not a superuser`)
    t.match(f.proconfig, [/^search_path=.*pg_temp$/], `${f.name} searches pg_temp last`)
  }
})

t.test('the app role holds exactly the privileges it needs', async (t) => {
  const { db, appRole } = await startService(t)
  const held = (await db.query(PRIVILEGES_SQL, [appRole])).rows.map((row) => row.privilege)
  t.same(held, EXPECTED_PRIVILEGES)
  t.same((await db.query(ATTRIBUTES_SQL, [appRole])).rows, [PLAIN_ROLE])
})

t.test('the app role reads ids and emails of the accounts it is shown, and no password hash', async (t) => {
  const { app, db, appDatabaseUrl } = await startService(t)
  const a = await signUp(app, 'A')
  const b = await signUp(app, 'B')
  const stored = (await db.query('SELECT password_hash FROM users WHERE id = $1', [b.userId])).rows[0].password_hash as string
  const client = await appClient(t, appDatabaseUrl)
  await client.query('BEGIN')
  // An attacker sets the context to whatever it likes: B's owner, as itself.
  await client.query("SELECT set_config('app.tenant_id', $1, true), set_config('app.user_id', $2, true)", [b.tenantId, b.userId])
  t.same((await client.query('SELECT id, email FROM users')).rows, [{ id: b.userId, email: b.email }], 'ids and emails of the accounts row-level security shows')
  const refused = async (statement: string, values: unknown[], message: string): Promise<void> => {
    await client.query('SAVEPOINT attempt')
    await t.rejects(client.query(statement, values), { code: '42501', message: /permission denied for table users/ }, message)
    await client.query('ROLLBACK TO SAVEPOINT attempt')
  }
  await refused('SELECT password_hash FROM users WHERE id = $1', [b.userId], 'the password hash: refused')
  await refused('SELECT * FROM users', [], 'every column: refused')
  await refused('SELECT to_jsonb(u) FROM users u', [], 'the row as a whole: refused')
  await refused('UPDATE users SET password_hash = $1 WHERE id = $2', [stored, a.userId], 'setting a hash: refused')
  await refused('INSERT INTO users (email, password_hash) VALUES ($1, $2)', ['x@example.test', stored], 'adding an account directly: refused')
  await refused('DELETE FROM users WHERE id = $1', [b.userId], 'removing one: refused')

  const settings = (await client.query('SELECT password_settings($1) AS s', [b.userId])).rows[0].s
  t.equal(settings, stored.slice(0, stored.lastIndexOf('$')), 'password_settings gives the scheme, cost and salt')
  t.notOk(settings.includes(stored.slice(stored.lastIndexOf('$') + 1)), 'and not the key')
  const matches = async (candidate: string): Promise<boolean> => (await client.query('SELECT password_matches($1, $2) AS m', [b.userId, candidate])).rows[0].m
  t.equal(await matches(await hashWithSettings('a wrong guess', settings)), false, 'password_matches says no to a wrong password')
  t.equal(await matches(await hashWithSettings(b.password, settings)), true, 'and yes to the right one, one scrypt per guess')
  await client.query('ROLLBACK')

  const tables = (await db.query(`SELECT relname, relforcerowsecurity FROM pg_class
    WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND relrowsecurity ORDER BY relname`)).rows
  t.same(tables.map((table) => table.relname), ['invitations', 'memberships', 'notes', 'refresh_tokens', 'tenants', 'users'])
  t.same(tables.filter((table) => !table.relforcerowsecurity), [], 'row-level security is forced wherever it is enabled: the owner is bound too')
})

t.test('the migrations run as an owner role that is not a superuser, also on a database set up as the superuser before', async (t) => {
  const db = await testDatabase(t)
  const appRole = 'mt_app_' + db.name
  const ownerRole = appRole + '_owner'
  db.afterDrop((admin) => admin.query(`DROP ROLE IF EXISTS ${appRole}, ${ownerRole}`))
  // The way setup went before: the superuser made the role and ran the migrations there were.
  await db.query(`CREATE ROLE ${appRole} LOGIN`)
  const superuser = new Kysely<any>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: db.url, max: 1 }) }) })
  await superuser.transaction().execute((trx) => migrate(trx, appRole, '004_invitations'))
  await superuser.destroy()
  t.same((await db.query('SELECT DISTINCT tableowner = current_user AS mine FROM pg_tables WHERE schemaname = \'public\'')).rows, [{ mine: true }],
    'the superuser owned everything')

  await prepareDatabase(db.url, appRole)
  t.same((await db.query(`SELECT rolsuper, rolcanlogin, rolbypassrls FROM pg_roles WHERE rolname = '${ownerRole}'`)).rows,
    [{ rolsuper: false, rolcanlogin: false, rolbypassrls: false }], 'the owner role: no superuser, no login, no BYPASSRLS')
  const owners = (await db.query(`
    SELECT DISTINCT owner FROM (
      SELECT relowner::regrole::text AS owner FROM pg_class WHERE relnamespace = 'public'::regnamespace
      UNION ALL SELECT proowner::regrole::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace
      UNION ALL SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'
      UNION ALL SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database()
    ) o`)).rows
  t.same(owners, [{ owner: ownerRole }], 'it owns the database, its schema, and every table, index, sequence and function in it')
  const applied = (await db.query('SELECT name FROM kysely_migration ORDER BY name')).rows.map((row) => row.name)
  t.same(applied.slice(0, 4), ['001_tables', '002_row_level_security', '003_app_role_grants', '004_invitations'])
  t.ok(applied.includes('006_least_privilege'), `and ran the rest: ${applied.slice(4).join(', ')}`)
  t.same((await db.query(PRIVILEGES_SQL, [appRole])).rows.map((row) => row.privilege), EXPECTED_PRIVILEGES, 'the app role ends with the same privileges')
})
