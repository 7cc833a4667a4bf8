// A burst of logins from one address, each with another email (so that the per-email limit never
// bites), must not starve other tenants: no route holds a pooled connection while it hashes a
// password. Latency is compared as a ratio (with and without the burst), never against a time.
import t from 'tap'
import { addMember, bearer, signUp, startService } from './service.js'

// Hundreds of requests and password hashes: more than tap's 30 s default on a loaded machine.
t.setTimeout(120_000)

const BURST = 200

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

t.test(`${BURST} concurrent logins and acceptances leave another tenant's requests fast, and the pool never times out`, async (t) => {
  // A real hash cost (N = 2^13, ~10-40 ms each: BURST of them keep the hash threads busy for
  // seconds), limits out of the way, and the app's default pool of 10.
  const { app, db } = await startService(t, { passwordCost: { N: 2 ** 13, r: 8, p: 1 }, loginAttempts: 10_000, loginAttemptsPerAddress: 10_000, signupAttempts: 10_000 })
  const attacked = await signUp(app, 'Attacked')
  const other = await signUp(app, 'Other')
  await app.inject({ method: 'POST', url: '/notes', headers: bearer(other), payload: { title: 'still here' } })
  // Open invitations, for acceptances with a wrong password in the burst: another route that hashes.
  const invited = await addMember(app, attacked, 'member')

  async function otherTenantReads (count: number): Promise<number[]> {
    const millis: number[] = []
    for (let i = 0; i < count; i++) {
      const started = performance.now()
      const res = await app.inject({ method: 'GET', url: '/notes', headers: bearer(other) })
      millis.push(performance.now() - started)
      if (res.statusCode !== 200) throw new Error(`GET /notes answered ${res.statusCode} ${res.body}`)
    }
    return millis
  }
  await otherTenantReads(5) // warm-up
  const quiet = median(await otherTenantReads(15))

  const statsBefore = app.db.stats()
  const burst = Promise.all(Array.from({ length: BURST }, (_, i) => i % 4 === 3
    ? app.inject({ method: 'POST', url: '/invitations/accept', payload: { token: `${attacked.tenantId}.${'A'.repeat(43)}`, password: 'a wrong password' } })
    : app.inject({ method: 'POST', url: '/login', payload: { tenantId: attacked.tenantId, email: i % 4 === 0 ? invited.email : `guess${i}@example.test`, password: 'a wrong password' } })))
  // Reads of the other tenant while the burst's hashes run.
  await new Promise((resolve) => setImmediate(resolve))
  const during = await otherTenantReads(15)
  const answers = await burst
  const statsAfter = app.db.stats()

  const statuses = answers.map((res) => res.statusCode)
  t.same([...new Set(statuses)], [401], `all ${BURST} were heard and refused with 401: no 503, no 500`)
  t.equal(statsAfter.acquireTimeouts - statsBefore.acquireTimeouts, 0, 'the pool never timed out')
  const ratio = median(during) / quiet
  t.ok(ratio < 30, `another tenant's GET /notes: median ${median(during).toFixed(1)} ms during the burst vs ${quiet.toFixed(1)} ms without: ratio ${ratio.toFixed(1)} < 30`)
  t.equal(statsAfter.active, 0, 'every connection is back')
  t.equal(await db.idleInTransaction(), 0)
})
