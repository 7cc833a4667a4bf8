// The service on a fresh test database, migrated as the owner and run as its own app role.
import { randomBytes } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import pg from 'pg'
import { testDatabase } from '../../../test/helpers/database.js'
import type { TestDatabase } from '../../../test/helpers/database.js'
import { buildApp } from '../app.js'
import type { App, AppOptions } from '../app.js'
import { outboxMailer } from '../mailer.js'
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
  /** The folder the service's mailer writes to. */
  outbox: string
}

const outboxes = new WeakMap<App, string>()

export async function startService (t: Test, options: Partial<AppOptions> = {}): Promise<Service> {
  const db = await testDatabase(t)
  // Roles are server-wide: one per test database, dropped after it.
  const appRole = 'mt_app_' + db.name
  db.afterDrop((admin) => admin.query(`DROP ROLE IF EXISTS ${appRole}, ${appRole}_owner`))
  const appDatabaseUrl = await prepareDatabase(db.url, appRole)
  const tokenSecret = randomBytes(32)
  const outbox = await mkdtemp(join(tmpdir(), 'mt-outbox-'))
  t.teardown(() => rm(outbox, { recursive: true, force: true }))
  // Limits per address high enough for a test's many sign-ups from 127.0.0.1; the tests of the
  // limits set their own.
  const app = await buildApp({
    databaseUrl: appDatabaseUrl,
    tokenSecret,
    mailer: outboxMailer(outbox),
    passwordCost: TEST_PASSWORD_COST,
    signupAttempts: 1000,
    loginAttemptsPerAddress: 1000,
    ...options
  })
  outboxes.set(app, outbox)
  t.teardown(() => app.close())
  return { app, db, appDatabaseUrl, appRole, tokenSecret, outbox }
}

/** For a service built by a test itself (buildApp) on `outbox`: what mails() and signUp() read. */
export function readOutbox (app: App, outbox: string): void {
  outboxes.set(app, outbox)
}

export interface Mail { file: string, to: string, subject: string, text: string, token: string | undefined }

/** Every mail the service sent, oldest first, as the outbox folder holds them. */
export async function mails (app: App): Promise<Mail[]> {
  const outbox = outboxes.get(app)
  if (outbox === undefined) throw new Error('not a service started by startService')
  const files = (await readdir(outbox)).filter((name) => name.endsWith('.eml')).sort()
  return Promise.all(files.map(async (file) => {
    const content = await readFile(join(outbox, file), 'utf8')
    const [head, ...body] = content.split('\n\n')
    const header = (name: string): string => new RegExp(`^${name}: (.*)$`, 'm').exec(head)?.[1] ?? ''
    const text = body.join('\n\n')
    return { file, to: header('To'), subject: header('Subject'), text, token: /^Token: (\S+)$/m.exec(text)?.[1] }
  }))
}

/** The token of the newest mail to `to` (whose token is for `tenantId`, when given). */
export async function mailedToken (app: App, to: string, tenantId?: string): Promise<string> {
  const found = (await mails(app)).filter((mail) => mail.to === to.toLowerCase() && (tenantId === undefined || mail.token?.startsWith(tenantId + '.'))).at(-1)
  if (found?.token === undefined) throw new Error(`no mail with a token to ${to}`)
  return found.token
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

/** Creates a tenant with its owner through the API: the sign-up, then its mailed token accepted. */
export async function signUp (app: App, name = `Tenant ${++counter}`, options: { email?: string, password?: string } = {}): Promise<Account> {
  const email = options.email ?? `owner${++counter}.${randomBytes(3).toString('hex')}@example.test`
  const password = options.password ?? 'correct horse battery staple'
  const res = await app.inject({ method: 'POST', url: '/tenants', payload: { name, email } })
  if (res.statusCode !== 202) throw new Error(`sign-up failed: ${res.statusCode} ${res.body}`)
  const token = await mailedToken(app, email)
  const accepted = await app.inject({ method: 'POST', url: '/invitations/accept', payload: { token, password } })
  if (accepted.statusCode !== 200) throw new Error(`confirming the sign-up of ${email} failed: ${accepted.statusCode} ${accepted.body}`)
  const body = accepted.json()
  return { tenantId: body.tenant.id, userId: body.user.id, email, password, accessToken: body.accessToken, refreshToken: body.refreshToken }
}

export function bearer (account: { accessToken: string }): Record<string, string> {
  return { authorization: `Bearer ${account.accessToken}` }
}

/** Invites `email` to the inviter's tenant: the token the invitee gets by mail. */
export async function invite (app: App, inviter: { accessToken: string, tenantId: string }, email: string, role: 'admin' | 'member'): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/members', headers: bearer(inviter), payload: { email, role } })
  if (res.statusCode !== 201) throw new Error(`inviting ${email} failed: ${res.statusCode} ${res.body}`)
  return mailedToken(app, email, inviter.tenantId)
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

/** Connects with `url` and asks who it is: rejects with PostgreSQL's error (28P01 for a wrong password). */
export async function currentUser (url: string): Promise<string> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<{ user: string }>('SELECT current_user AS user')).rows[0].user
  } finally {
    await client.end()
  }
}
