// The service on a fresh test database, migrated as the owner and run as its own app role.
import { randomBytes } from 'node:crypto'
import type { Test } from 'tap'
import { testDatabase } from '../../../test/helpers/database.js'
import type { TestDatabase } from '../../../test/helpers/database.js'
import { buildApp } from '../app.js'
import type { App, AppOptions } from '../app.js'
import { prepareDatabase } from '../setup.js'

/** Cheap enough for hundreds of hashes in a test run; production uses PRODUCTION_COST. */
export const TEST_PASSWORD_COST = { N: 1024, r: 8, p: 1 }

export interface Service {
  app: App
  db: TestDatabase
  /** The app role's connection string (no BYPASSRLS, owns nothing). */
  appDatabaseUrl: string
  appRole: string
  tokenSecret: Buffer
}

export async function startService (t: Test, options: Partial<AppOptions> = {}): Promise<Service> {
  const db = await testDatabase(t)
  // Roles are server-wide: one per test database, dropped after it.
  const appRole = 'mt_app_' + db.name
  db.afterDrop((admin) => admin.query(`DROP ROLE IF EXISTS ${appRole}, ${appRole}_owner`))
  const appDatabaseUrl = await prepareDatabase(db.url, appRole)
  const tokenSecret = randomBytes(32)
  const app = await buildApp({ databaseUrl: appDatabaseUrl, tokenSecret, passwordCost: TEST_PASSWORD_COST, ...options })
  t.teardown(() => app.close())
  return { app, db, appDatabaseUrl, appRole, tokenSecret }
}

export interface Account {
  tenantId: string
  userId: string
  email: string
  password: string
  accessToken: string
  refreshToken: string
}

let counter = 0

/** Creates a tenant with its owner through the API. */
export async function signUp (app: App, name = `Tenant ${++counter}`): Promise<Account> {
  const email = `owner${++counter}.${randomBytes(3).toString('hex')}@example.test`
  const password = 'correct horse battery staple'
  const res = await app.inject({ method: 'POST', url: '/tenants', payload: { name, email, password } })
  if (res.statusCode !== 201) throw new Error(`sign-up failed: ${res.statusCode} ${res.body}`)
  const body = res.json()
  return { tenantId: body.tenant.id, userId: body.user.id, email, password, accessToken: body.accessToken, refreshToken: body.refreshToken }
}

export function bearer (account: { accessToken: string }): Record<string, string> {
  return { authorization: `Bearer ${account.accessToken}` }
}

/** Invites `email` to the inviter's tenant: the token the invitee would get by mail. */
export async function invite (app: App, inviter: { accessToken: string }, email: string, role: 'admin' | 'member'): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/members', headers: bearer(inviter), payload: { email, role } })
  if (res.statusCode !== 201) throw new Error(`inviting ${email} failed: ${res.statusCode} ${res.body}`)
  return res.json().invitationToken
}

/**
 * Adds a member to the inviter's tenant through the API: an invitation, accepted with `password`
 * (a new account's, or an existing account's own). The member is logged in.
 */
export async function addMember (app: App, inviter: Account, role: 'admin' | 'member', options: { email?: string, password?: string } = {}): Promise<Account> {
  const email = options.email ?? `${role}.${randomBytes(4).toString('hex')}@example.test`
  const password = options.password ?? 'a member password'
  const token = await invite(app, inviter, email, role)
  const res = await app.inject({ method: 'POST', url: '/invitations/accept', payload: { token, password } })
  if (res.statusCode !== 200) throw new Error(`accepting the invitation of ${email} failed: ${res.statusCode} ${res.body}`)
  const body = res.json()
  return { tenantId: inviter.tenantId, userId: body.user.id, email, password, accessToken: body.accessToken, refreshToken: body.refreshToken }
}
