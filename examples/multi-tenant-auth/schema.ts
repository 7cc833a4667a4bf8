// The service's tables as Kysely sees them.
import type { Generated } from 'kysely'
import type {} from 'fastify-db-session'

export type Role = 'owner' | 'admin' | 'member'

export interface Database {
  tenants: { id: string, name: string, created_at: Generated<Date> }
  users: { id: Generated<string>, email: string, password_hash: string, created_at: Generated<Date> }
  memberships: { tenant_id: string, user_id: string, role: Role, created_at: Generated<Date> }
  notes: {
    id: Generated<string>
    tenant_id: Generated<string>
    author_id: string
    title: string
    body: Generated<string>
    created_at: Generated<Date>
    updated_at: Generated<Date>
  }
  refresh_tokens: {
    token_hash: Buffer
    family_id: string
    tenant_id: string
    user_id: string
    expires_at: Date
    used_at: Date | null
    revoked_at: Date | null
    created_at: Generated<Date>
  }
  invitations: {
    id: Generated<string>
    tenant_id: string
    email: string
    role: Role
    token_hash: Buffer
    expires_at: Date
    /** null for a sign-up's invitation of the new tenant's owner */
    created_by: string | null
    created_at: Generated<Date>
    accepted_at: Date | null
    accepted_by: string | null
  }
}

declare module 'fastify-db-session' {
  interface DbSessionRegister { database: Database }
}
