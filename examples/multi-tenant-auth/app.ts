// The multi-tenant auth service: accounts, tenants, memberships and notes, isolated by
// PostgreSQL row-level security keyed on fastify-db-session's per-request context.
import Fastify from 'fastify'
import type { Kysely } from 'kysely'
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifyServerOptions } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import rateLimit from '@fastify/rate-limit'
import dbSession from 'fastify-db-session'
import { hashPassword, PRODUCTION_COST } from './passwords.js'
import type { PasswordCost } from './passwords.js'
import { answerError, formatSchemaErrors } from './http-errors.js'
import { UUID, verifyAccessToken } from './tokens.js'
import type { AccessClaims } from './tokens.js'
import type { Mailer } from './mailer.js'
import type { Database, Role } from './schema.js'
import authRoutes from './routes/auth.js'
import invitationRoutes from './routes/invitations.js'
import memberRoutes from './routes/members.js'
import noteRoutes from './routes/notes.js'
import opsRoutes from './routes/ops.js'

export interface AppOptions {
  /** Connection string of the app role (not the owner). */
  databaseUrl: string
  /** Secret for signing access tokens: 32 random bytes or more. */
  tokenSecret: Buffer
  /** Sends sign-up confirmations and invitations (mailer.ts: the example's writes to a folder). */
  mailer: Mailer
  passwordCost?: PasswordCost
  accessTokenSeconds?: number
  refreshTokenDays?: number
  /** Login attempts per email and address in `loginWindowMillis`. */
  loginAttempts?: number
  /** Login attempts per address, whatever the email, in `loginWindowMillis`: each costs a password hash. */
  loginAttemptsPerAddress?: number
  /**
   * Sign-ups (POST /tenants: each sends a mail) and invitation acceptances (each costs a password
   * hash), each per address in `loginWindowMillis`.
   */
  signupAttempts?: number
  loginWindowMillis?: number
  /** How long an invitation's token can be accepted. */
  invitationDays?: number
  maxConnections?: number
  /**
   * Connection strings of the app role on hot standbys of the database: the read routes (GET
   * /notes, /notes/:id, /members, /me) run there, and a client that sends back the db-session-lsn
   * header of its last write reads what it wrote. None: everything runs on the primary.
   */
  replicaUrls?: string[]
  /** Fastify's `logger` option. */
  logger?: FastifyServerOptions['logger']
}

export interface AppSettings {
  tokenSecret: Buffer
  passwordCost: PasswordCost
  accessTokenSeconds: number
  refreshTokenDays: number
  loginAttempts: number
  loginAttemptsPerAddress: number
  signupAttempts: number
  loginWindowMillis: number
  invitationDays: number
  /** A hash checked when an email is unknown, so that login takes the same time either way. */
  dummyPasswordHash: string
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Who is asking, once authenticate ran: the token's claims, and the role read from the database. */
    auth: (AccessClaims & { role: Role }) | null
    /** What the database context functions read: set by authenticate, or by a handler before its first query. */
    dbContext: { tenantId?: string, userId?: string } | null
    /**
     * Set by a handler whose error answer must still commit what it wrote: a reused refresh
     * token revokes its family and answers 401. See `commitWhen` below.
     */
    commitDespiteError: boolean
  }
  interface FastifyInstance {
    settings: AppSettings
    mailer: Mailer
    authenticate: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  }
}

export type App = FastifyInstance<any, any, any, any, TypeBoxTypeProvider>

export async function buildApp (options: AppOptions): Promise<App> {
  if (options.tokenSecret.length < 32) throw new Error('tokenSecret must be at least 32 bytes')
  const app = Fastify({
    logger: options.logger ?? false,
    // A 10,000-character note body, JSON-escaped, fits.
    bodyLimit: 64 * 1024,
    // Refuse what the schemas do not allow, instead of Fastify's defaults of silently dropping
    // unknown properties and coercing types ({"title": 42} is not a title).
    // Ids have one spelling, the one the service issues (see Uuid in routes/common.ts).
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, formats: { 'lowercase-uuid': UUID } } },
    schemaErrorFormatter: formatSchemaErrors
  }).withTypeProvider<TypeBoxTypeProvider>()
  app.setErrorHandler(answerError)
  const passwordCost = options.passwordCost ?? PRODUCTION_COST
  app.decorate('settings', {
    tokenSecret: options.tokenSecret,
    passwordCost,
    accessTokenSeconds: options.accessTokenSeconds ?? 900,
    refreshTokenDays: options.refreshTokenDays ?? 30,
    loginAttempts: options.loginAttempts ?? 10,
    loginAttemptsPerAddress: options.loginAttemptsPerAddress ?? 30,
    signupAttempts: options.signupAttempts ?? 10,
    loginWindowMillis: options.loginWindowMillis ?? 60_000,
    invitationDays: options.invitationDays ?? 7,
    dummyPasswordHash: await hashPassword('not a real password', passwordCost)
  })
  app.decorate('mailer', options.mailer)

  await app.register(dbSession, {
    connectionString: options.databaseUrl,
    maxConnections: options.maxConnections ?? 10,
    name: 'app',
    // Read only routes run on these (see replicaUrls above).
    ...(options.replicaUrls === undefined || options.replicaUrls.length === 0 ? {} : { replicas: options.replicaUrls }),
    // Safety nets: no statement runs past 5 s, a transaction held 2 s is logged, one held 30 s is
    // ended, and a database that is down is answered 503 at once instead of by every request.
    statementTimeoutMillis: 5000,
    idleInTransactionTimeoutMillis: 10000,
    leakDetectionMillis: 2000,
    leakTimeoutMillis: 30000,
    circuitBreaker: true,
    // An error status rolls back, unless the handler set commitDespiteError: then what it wrote
    // (a revocation) commits in the request's own transaction, with no second connection.
    commitWhen: (request, reply) => reply.statusCode < 400 || request.commitDespiteError,
    // Row-level security reads these; they are set inside each request's transaction only.
    context: {
      'app.tenant_id': (request) => request.dbContext?.tenantId,
      'app.user_id': (request) => request.dbContext?.userId
    }
  })
  await app.register(rateLimit, { global: false })

  app.decorateRequest('auth', null)
  app.decorateRequest('dbContext', null)
  app.decorateRequest('commitDespiteError', false)
  const replicated = options.replicaUrls !== undefined && options.replicaUrls.length > 0
  app.decorate('authenticate', async function (request: FastifyRequest, reply: FastifyReply) {
    // The scheme is case-insensitive, followed by one or more spaces (RFC 9110, 11.4 and 11.6.2).
    const bearer = /^Bearer +(\S+)$/i.exec(request.headers.authorization ?? '')
    const claims = bearer === null ? null : verifyAccessToken(options.tokenSecret, bearer[1])
    if (claims === null) {
      return reply.code(401).header('www-authenticate', 'Bearer').send({ code: 'UNAUTHORIZED', message: 'a valid access token is required' })
    }
    request.dbContext = { tenantId: claims.tid, userId: claims.sub }
    // The session is still open (not logged out, not revoked by a reused refresh token) and the
    // user still a member: one indexed query, the first of this request's transaction (its BEGIN
    // rides along), so a logout or a removal takes effect at the next request, and the role is
    // the one the database holds now, not the one at login. A read only route's transaction runs
    // on a standby when there are replicas, which may not have replayed a logout yet: there the
    // check asks the primary, so that no revoked token reads anything for the replication lag.
    const routeSettings = request.routeOptions.config.db
    const onStandby = replicated && routeSettings !== false && routeSettings?.accessMode === 'read only'
    const member = onStandby
      ? await app.db.transaction((trx) => sessionMember(trx, claims), {
        accessMode: 'read only',
        replica: false,
        label: 'authenticate',
        context: { 'app.tenant_id': claims.tid, 'app.user_id': claims.sub }
      })
      : await sessionMember(request.db, claims)
    if (member === undefined) {
      return reply.code(401).header('www-authenticate', 'Bearer').send({ code: 'SESSION_ENDED', message: 'this session has ended (logged out, revoked, or no longer a member); log in again' })
    }
    request.auth = { ...claims, role: member.role }
  })

  await app.register(authRoutes)
  await app.register(invitationRoutes)
  await app.register(memberRoutes)
  await app.register(noteRoutes)
  await app.register(opsRoutes)
  return app
}

/** The member's role while the access token's session is open and the member still belongs; undefined otherwise. */
async function sessionMember (db: Kysely<Database>, claims: AccessClaims): Promise<{ role: Role } | undefined> {
  return db.selectFrom('memberships')
    .select('role')
    .where('user_id', '=', claims.sub)
    .where((eb) => eb.exists(eb.selectFrom('refresh_tokens').select('family_id')
      .where('family_id', '=', claims.sid)
      .where('user_id', '=', claims.sub)
      .where('revoked_at', 'is', null)
      .where('expires_at', '>', new Date())))
    .executeTakeFirst()
}
