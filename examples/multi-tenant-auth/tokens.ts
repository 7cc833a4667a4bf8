// Short-lived access tokens (HMAC-signed claims) and opaque refresh tokens (stored hashed).
import { createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto'

export interface AccessClaims {
  /** user id */
  sub: string
  /** tenant id */
  tid: string
  /**
   * session id: the refresh-token family the token was issued with. Each request checks that the
   * session is still open (app.ts, authenticate), so logout ends its access tokens at once.
   */
  sid: string
  /** expiry, seconds since the epoch */
  exp: number
}

/** A UUID as the service issues them: lower case, hyphenated, nothing around it. */
export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

function sign (secret: Buffer, payload: string): Buffer {
  return createHmac('sha256', secret).update('v1.' + payload).digest()
}

export function signAccessToken (secret: Buffer, claims: Omit<AccessClaims, 'exp'>, ttlSeconds: number): string {
  const payload = Buffer.from(JSON.stringify({ ...claims, exp: Math.floor(Date.now() / 1000) + ttlSeconds })).toString('base64url')
  return `v1.${payload}.${sign(secret, payload).toString('base64url')}`
}

/** The claims of a genuine, unexpired token; null for anything else. */
export function verifyAccessToken (secret: Buffer, token: string): AccessClaims | null {
  const [version, payload, signature, extra] = token.split('.')
  if (version !== 'v1' || payload === undefined || signature === undefined || extra !== undefined) return null
  // The text is compared, not the bytes it decodes to: a decoder forgives extra '=', the other
  // base64 alphabet and changed padding bits, and a token must have one spelling only.
  const given = Buffer.from(signature)
  const expected = Buffer.from(sign(secret, payload).toString('base64url'))
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null
  let claims: AccessClaims
  try {
    claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))
  } catch {
    return null
  }
  const valid = typeof claims === 'object' && claims !== null &&
    typeof claims.sub === 'string' && UUID.test(claims.sub) &&
    typeof claims.tid === 'string' && UUID.test(claims.tid) &&
    typeof claims.sid === 'string' && UUID.test(claims.sid) && Number.isInteger(claims.exp)
  return valid && claims.exp > Date.now() / 1000 ? claims : null
}

/** `<tenant id>.<random>`: the tenant tells which tenant's rows to look in; only the hash is stored. */
export function newRefreshToken (tenantId: string): { token: string, hash: Buffer } {
  const token = `${tenantId}.${randomBytes(32).toString('base64url')}`
  return { token, hash: hashRefreshToken(token) }
}

export function hashRefreshToken (token: string): Buffer {
  return createHash('sha256').update(token).digest()
}

export function parseRefreshToken (token: string): { tenantId: string, hash: Buffer } | null {
  const [tenantId, secret, extra] = token.split('.')
  if (!UUID.test(tenantId) || secret === undefined || !/^[A-Za-z0-9_-]{43}$/.test(secret) || extra !== undefined) return null
  return { tenantId, hash: hashRefreshToken(token) }
}

export const newFamilyId = randomUUID

// Invitation tokens have the same form (the tenant, then 256 random bits) and are likewise stored
// only as a hash, in their own table.
export const newInvitationToken = newRefreshToken
export const parseInvitationToken = parseRefreshToken
