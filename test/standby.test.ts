// The replication the replica tests run on is real: a hot standby that replays what its primary commits.
import t from 'tap'
import { startReplicationPair } from './helpers/standby.js'

t.setTimeout(120_000)

t.test('the standby is in recovery and replays a row written on the primary', async (t) => {
  const { primary, standby, caughtUp } = await startReplicationPair(t)
  const { rows: [{ recovery }] } = await standby.query('SELECT pg_is_in_recovery() AS recovery')
  t.equal(recovery, true, 'the standby is a standby')
  const { rows: [{ primaryRecovery }] } = await primary.query('SELECT pg_is_in_recovery() AS "primaryRecovery"')
  t.equal(primaryRecovery, false)
  await primary.query('CREATE TABLE notes (body text)')
  await primary.query("INSERT INTO notes VALUES ('written on the primary')")
  await caughtUp()
  const { rows } = await standby.query('SELECT body FROM notes')
  t.same(rows, [{ body: 'written on the primary' }])
  await t.rejects(standby.query("INSERT INTO notes VALUES ('x')"), { code: '25006' }, 'a standby refuses writes')
})
