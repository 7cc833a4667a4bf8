// fastify.db.transaction(fn, options): a misspelt option is refused, naming the closest known
// key, as a misspelt plugin option or route config.db key is, instead of being dropped in silence.
import t from 'tap'
import { testDatabase } from './helpers/database.js'

t.test('an unknown key in transaction() options is refused, with the closest known key, before any connection', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app()
  let ran = 0
  const insert = async (trx: any) => { ran++; await trx.insertInto('items').values({ name: 'apple' }).execute() }

  await t.rejects(app.db.transaction(insert, { isolationLvl: 'serializable' } as any), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: "fastify-db-session: fastify.db.transaction: options has an unknown key 'isolationLvl' (did you mean 'isolationLevel'?); known keys are isolationLevel, accessMode, statementTimeoutMillis, idleInTransactionTimeoutMillis, retries, replica, autocommit, respondBeforeCommit, context, label, lsn"
  })
  await t.rejects(app.db.transaction(insert, { contxt: { 'app.tenant_id': '1' } } as any), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /unknown key 'contxt' \(did you mean 'context'\?\)/
  })
  await t.rejects(app.db.transaction(insert, { somethingElse: true } as any), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /options has an unknown key 'somethingElse'; known keys are/
  })
  await t.rejects(app.db.transaction(insert, 'read only' as any), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /options must be an object like \{ isolationLevel, accessMode, context \}; instead got 'read only'/
  })
  await t.rejects(app.db.transaction(insert, null as any), { code: 'FST_DB_SESSION_INVALID_OPTION' })
  t.equal(ran, 0, 'the function never ran')
  t.equal(app.db.stats().acquires, 0, 'no connection was taken')
  t.equal((await db.query('SELECT count(*)::int AS n FROM items')).rows[0].n, 0)

  // The known keys all pass, an explicit undefined among them.
  await app.db.transaction(insert, { isolationLevel: 'serializable', accessMode: 'read write', statementTimeoutMillis: 1000, idleInTransactionTimeoutMillis: 1000, retries: 1, autocommit: false, context: undefined, label: 'keys' })
  await app.db.transaction(insert, {})
  t.equal((await db.query('SELECT count(*)::int AS n FROM items')).rows[0].n, 2)
})
