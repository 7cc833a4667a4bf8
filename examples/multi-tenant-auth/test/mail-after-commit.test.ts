// Mail goes out only for work that stands: the invitation (POST /members) and the sign-up
// (POST /tenants) are mailed from afterCommit, so a request whose transaction rolls back (here
// at its COMMIT, the last moment) mails nothing, and one that commits mails exactly one.
import t from 'tap'
import type { Test } from 'tap'
import { bearer, mails, signUp, startService } from './service.js'
import type { Service } from './service.js'

/**
 * A deferred constraint trigger that fails the COMMIT of any transaction which wrote an
 * invitation for a `doomed` address: the route's work all succeeds, and then nothing commits.
 * Created by the test's superuser connection; the app role only fires it.
 */
async function doomAtCommit (service: Service): Promise<void> {
  await service.db.query(`CREATE FUNCTION test_doomed_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.email LIKE 'doomed%' THEN RAISE EXCEPTION 'this invitation may not commit' USING ERRCODE = '23514'; END IF;
      RETURN NULL;
    END $$`)
  await service.db.query(`CREATE CONSTRAINT TRIGGER test_doomed_at_commit AFTER INSERT ON invitations
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_doomed_at_commit()`)
}

async function invitationsTo (service: Service, email: string): Promise<number> {
  return (await service.db.query('SELECT count(*)::int AS n FROM invitations WHERE email = $1', [email])).rows[0].n
}

async function mailsTo (service: Service, email: string): Promise<number> {
  return (await mails(service.app)).filter((mail) => mail.to === email).length
}

t.test('POST /members: an invitation whose request rolled back mails nothing; one that committed mails exactly one', async (t: Test) => {
  const service = await startService(t)
  const { app } = service
  const owner = await signUp(app, 'Acme')
  await doomAtCommit(service)

  const doomed = await app.inject({ method: 'POST', url: '/members', headers: bearer(owner), payload: { email: 'doomed@acme.test', role: 'member' } })
  t.equal(doomed.statusCode, 500, 'its COMMIT failed')
  t.equal(doomed.json().code, 'INTERNAL_ERROR', 'the example answers a failed COMMIT as an internal error')
  t.equal(await invitationsTo(service, 'doomed@acme.test'), 0, 'no invitation was recorded')
  t.equal(await mailsTo(service, 'doomed@acme.test'), 0, 'and none was mailed')

  const invited = await app.inject({ method: 'POST', url: '/members', headers: bearer(owner), payload: { email: 'bob@acme.test', role: 'member' } })
  t.equal(invited.statusCode, 201)
  // Read as the 201 arrives: the mail was written before the response was sent.
  t.equal(await mailsTo(service, 'bob@acme.test'), 1, 'exactly one mail for the committed invitation')
  t.equal(await invitationsTo(service, 'bob@acme.test'), 1)
  t.equal(app.db.stats().callbackErrors, 0)
})

t.test('POST /tenants: a sign-up whose transaction rolled back mails nothing; one that committed mails exactly one', async (t: Test) => {
  const service = await startService(t)
  const { app } = service
  await doomAtCommit(service)

  const doomed = await app.inject({ method: 'POST', url: '/tenants', payload: { name: 'Doomed', email: 'doomed@example.test' } })
  t.equal(doomed.statusCode, 500, 'its COMMIT failed')
  t.equal(await invitationsTo(service, 'doomed@example.test'), 0)
  t.equal(await mailsTo(service, 'doomed@example.test'), 0, 'nothing was mailed')

  const signedUp = await app.inject({ method: 'POST', url: '/tenants', payload: { name: 'Fine', email: 'ada@example.test' } })
  t.equal(signedUp.statusCode, 202)
  t.equal(await mailsTo(service, 'ada@example.test'), 1, 'exactly one mail for the committed sign-up')
})
