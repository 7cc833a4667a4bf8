// Access tokens: only the canonical signature verifies, the Bearer scheme is matched in any case,
// and a token stops working as soon as its session ends (logout, a reused refresh token, a removed
// membership), with the role read from the database on each request.
import t from 'tap'
import { addMember, bearer, signUp, startService } from './service.js'
import type { App } from '../app.js'
import { signAccessToken, verifyAccessToken } from '../tokens.js'

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

async function status (app: App, authorization: string, url = '/me'): Promise<number> {
  return (await app.inject({ method: 'GET', url, headers: { authorization } })).statusCode
}

t.test('only the canonical encoding of the signature verifies', async (t) => {
  const { app, tokenSecret } = await startService(t)
  const owner = await signUp(app)
  const claims = verifyAccessToken(tokenSecret, owner.accessToken)
  t.ok(claims, 'control: the token as issued verifies')
  // A signature with a '-' or '_' in it, so that its standard-alphabet form is another string
  // (about one signature in four has neither): the same claims, signed with another lifetime.
  let accessToken = owner.accessToken
  for (let ttl = 900; !/[-_]/.test(accessToken.split('.')[2]); ttl++) {
    accessToken = signAccessToken(tokenSecret, { sub: claims!.sub, tid: claims!.tid, sid: claims!.sid }, ttl)
  }
  t.equal(await status(app, `Bearer ${accessToken}`), 200, 'control: that token works')
  const [version, payload, signature] = accessToken.split('.')
  t.equal(signature.length, 43, 'an HMAC-SHA256 in base64url without padding')

  // The last of 43 characters carries 4 bits of the digest and 2 padding bits: flipping the lowest
  // bit changes only padding, so the decoded bytes are the same.
  const last = BASE64URL.indexOf(signature.at(-1)!)
  const paddingBits = signature.slice(0, -1) + BASE64URL[last ^ 1]
  const standardAlphabet = Buffer.from(signature, 'base64url').toString('base64')
  const variants: Array<[string, string]> = [
    ['an extra =', signature + '='],
    ['two extra =', signature + '=='],
    ['the standard base64 alphabet with its padding', standardAlphabet],
    ['the standard alphabet without padding', standardAlphabet.replace(/=+$/, '')],
    ['changed padding bits', paddingBits],
    ['a space inside', signature.slice(0, 10) + ' ' + signature.slice(10)],
    ['a character Buffer.from skips', signature.slice(0, 10) + '.' + signature.slice(10)]
  ]
  for (const [label, variant] of variants) {
    t.not(variant, signature, `${label}: a different string`)
    const token = `${version}.${payload}.${variant}`
    t.equal(verifyAccessToken(tokenSecret, token), null, `${label}: refused by verifyAccessToken`)
    t.equal(await status(app, `Bearer ${token}`), 401, `${label}: GET /me answers 401`)
  }
})

t.test('the Bearer scheme is matched in any case (RFC 9110), and nothing else is', async (t) => {
  const { app } = await startService(t)
  const owner = await signUp(app)
  for (const scheme of ['Bearer', 'bearer', 'BEARER', 'bEaReR']) {
    t.equal(await status(app, `${scheme} ${owner.accessToken}`), 200, `${scheme} is accepted`)
  }
  t.equal(await status(app, `Bearer   ${owner.accessToken}`), 200, 'one or more spaces after the scheme (1*SP)')
  for (const header of [`Bearer${owner.accessToken}`, `Bearerx ${owner.accessToken}`, `Basic ${owner.accessToken}`, `Bearer ${owner.accessToken} x`, ` Bearer ${owner.accessToken}`]) {
    t.equal(await status(app, header), 401, `refused: ${JSON.stringify(header.slice(0, 12))}…`)
  }
})

t.test('an access token stops working when its session ends, and the role comes from the database', async (t) => {
  const { app, db } = await startService(t)
  const owner = await signUp(app)

  t.test('logout ends the access tokens of its session at once, and no other', async (t) => {
    const login = await app.inject({ method: 'POST', url: '/login', payload: { tenantId: owner.tenantId, email: owner.email, password: owner.password } })
    const session = login.json()
    t.equal(await status(app, `Bearer ${session.accessToken}`, '/notes'), 200, 'control: the new session works')
    const out = await app.inject({ method: 'POST', url: '/logout', payload: { refreshToken: session.refreshToken } })
    t.equal(out.statusCode, 204)
    const after = await app.inject({ method: 'GET', url: '/notes', headers: bearer(session) })
    t.same([after.statusCode, after.json().code], [401, 'SESSION_ENDED'], 'its access token is refused on the next request')
    t.equal(await status(app, `Bearer ${owner.accessToken}`, '/notes'), 200, 'the sign-up\'s own session still works')
  })

  t.test('a reused refresh token ends the access tokens of its family', async (t) => {
    const login = (await app.inject({ method: 'POST', url: '/login', payload: { tenantId: owner.tenantId, email: owner.email, password: owner.password } })).json()
    const rotated = (await app.inject({ method: 'POST', url: '/refresh', payload: { refreshToken: login.refreshToken } })).json()
    t.equal(await status(app, `Bearer ${rotated.accessToken}`, '/notes'), 200, 'control: the rotated session works')
    const reused = await app.inject({ method: 'POST', url: '/refresh', payload: { refreshToken: login.refreshToken } })
    t.equal(reused.json().code, 'REFRESH_TOKEN_REUSED')
    t.equal(await status(app, `Bearer ${rotated.accessToken}`, '/notes'), 401, 'the thief\'s or the owner\'s fresh access token is refused')
    t.equal(await status(app, `Bearer ${login.accessToken}`, '/notes'), 401, 'and so is the first one')
  })

  t.test('the role is read from the database on each request, not trusted from the token', async (t) => {
    const admin = await addMember(app, owner, 'admin')
    const invite = (): Promise<number> => app.inject({ method: 'POST', url: '/members', headers: bearer(admin), payload: { email: `x${Date.now()}@example.test`, role: 'member' } })
      .then((res) => res.statusCode)
    t.equal(await invite(), 201, 'control: an admin invites')
    await db.query("UPDATE memberships SET role = 'member' WHERE user_id = $1 AND tenant_id = $2", [admin.userId, owner.tenantId])
    t.equal(await invite(), 403, 'demoted to member in the database: refused at once, with the same token')
    t.equal((await app.inject({ method: 'GET', url: '/me', headers: bearer(admin) })).json().role, 'member', '/me says member')
    await db.query('DELETE FROM memberships WHERE user_id = $1 AND tenant_id = $2', [admin.userId, owner.tenantId])
    const gone = await app.inject({ method: 'GET', url: '/notes', headers: bearer(admin) })
    t.same([gone.statusCode, gone.json().code], [401, 'SESSION_ENDED'], 'removed from the tenant: refused at once')
  })
})
