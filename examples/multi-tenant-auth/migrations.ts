// Schema and row-level security, applied by Kysely's Migrator as the database's owner role (not a
// superuser: see setup.ts). The app connects as `appRole`, which owns nothing, cannot bypass RLS,
// and gets only the grants below. Applied migrations are never edited: 006 corrects 002 and 003.
import { sql } from 'kysely'
import type { Transaction } from 'kysely'
import { Migrator } from 'kysely/migration'
import type { Migration } from 'kysely/migration'

function migrations (appRole: string): Record<string, Migration> {
  const role = sql.id(appRole)
  return {
    '001_tables': {
      async up (db) {
        await sql`
          CREATE TABLE tenants (
            id uuid PRIMARY KEY,
            name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
            created_at timestamptz NOT NULL DEFAULT now()
          );
          CREATE TABLE users (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            email text NOT NULL UNIQUE CHECK (email = lower(email)),
            password_hash text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
          );
          CREATE TABLE memberships (
            tenant_id uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
            user_id uuid NOT NULL REFERENCES users ON DELETE CASCADE,
            role text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, user_id)
          );
          CREATE TABLE notes (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id uuid NOT NULL DEFAULT nullif(current_setting('app.tenant_id', true), '')::uuid
              REFERENCES tenants ON DELETE CASCADE,
            author_id uuid NOT NULL REFERENCES users,
            title text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
            body text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
          );
          CREATE INDEX notes_tenant ON notes (tenant_id, created_at);
          CREATE TABLE refresh_tokens (
            token_hash bytea PRIMARY KEY,
            family_id uuid NOT NULL,
            tenant_id uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
            user_id uuid NOT NULL REFERENCES users ON DELETE CASCADE,
            expires_at timestamptz NOT NULL,
            used_at timestamptz,
            revoked_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now()
          );
          CREATE INDEX refresh_tokens_family ON refresh_tokens (tenant_id, family_id);
        `.execute(db)
      }
    },
    '002_row_level_security': {
      async up (db) {
        // Fail closed: an empty or missing setting is NULL, and NULL matches no row.
        await sql`
          CREATE FUNCTION app_tenant() RETURNS uuid LANGUAGE sql STABLE
            AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;
          CREATE FUNCTION app_user() RETURNS uuid LANGUAGE sql STABLE
            AS $$ SELECT nullif(current_setting('app.user_id', true), '')::uuid $$;

          ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
          ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
          CREATE POLICY tenant_own ON tenants USING (id = app_tenant()) WITH CHECK (id = app_tenant());

          ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
          ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
          CREATE POLICY tenant_own ON memberships USING (tenant_id = app_tenant()) WITH CHECK (tenant_id = app_tenant());

          ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
          ALTER TABLE notes FORCE ROW LEVEL SECURITY;
          CREATE POLICY tenant_own ON notes USING (tenant_id = app_tenant()) WITH CHECK (tenant_id = app_tenant());

          ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
          ALTER TABLE refresh_tokens FORCE ROW LEVEL SECURITY;
          CREATE POLICY tenant_own ON refresh_tokens USING (tenant_id = app_tenant()) WITH CHECK (tenant_id = app_tenant());

          -- Accounts are global: a user sees itself and the members of the current tenant.
          ALTER TABLE users ENABLE ROW LEVEL SECURITY;
          CREATE POLICY self_or_member ON users FOR SELECT USING (
            id = app_user()
            OR EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = users.id AND m.tenant_id = app_tenant())
          );
          CREATE POLICY update_self ON users FOR UPDATE USING (id = app_user()) WITH CHECK (id = app_user());

          -- The two things the app may do with accounts it cannot see (SECURITY DEFINER: they run
          -- as the owner); neither returns a hash. Both are called only by POST /tenants and POST
          -- /invitations/accept (routes/accounts.ts), which make a new account for an email that
          -- has none, or else make the caller prove the existing account's password.
          -- create_user: a new account, from a hash made by the app; returns its id.
          CREATE FUNCTION create_user(p_email text, p_password_hash text) RETURNS uuid
            LANGUAGE sql SECURITY DEFINER SET search_path = public
            AS $$ INSERT INTO users (email, password_hash) VALUES (p_email, p_password_hash) RETURNING id $$;
          -- user_id_by_email: the id of the account with this (lowercased) email, or NULL.
          CREATE FUNCTION user_id_by_email(p_email text) RETURNS uuid
            LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
            AS $$ SELECT id FROM users WHERE email = p_email $$;
          REVOKE ALL ON FUNCTION create_user(text, text), user_id_by_email(text) FROM PUBLIC;
        `.execute(db)
      }
    },
    '003_app_role_grants': {
      async up (db) {
        await sql`GRANT USAGE ON SCHEMA public TO ${role}`.execute(db)
        await sql`GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, memberships, notes, refresh_tokens TO ${role}`.execute(db)
        await sql`GRANT SELECT, UPDATE (password_hash) ON users TO ${role}`.execute(db)
        await sql`GRANT EXECUTE ON FUNCTION create_user(text, text), user_id_by_email(text), app_tenant(), app_user() TO ${role}`.execute(db)
      }
    },
    '004_invitations': {
      async up (db) {
        // POST /members records an invitation; POST /invitations/accept, with its token, turns it
        // into a membership for whoever proves they own the email's account (or makes the
        // account). Tenant-owned like notes: row-level security on app.tenant_id.
        await sql`
          CREATE TABLE invitations (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id uuid NOT NULL DEFAULT app_tenant() REFERENCES tenants ON DELETE CASCADE,
            email text NOT NULL CHECK (email = lower(email)),
            role text NOT NULL CHECK (role IN ('admin', 'member')),
            token_hash bytea NOT NULL UNIQUE,
            expires_at timestamptz NOT NULL,
            created_by uuid NOT NULL REFERENCES users ON DELETE CASCADE,
            created_at timestamptz NOT NULL DEFAULT now(),
            accepted_at timestamptz,
            accepted_by uuid REFERENCES users ON DELETE SET NULL
          );
          CREATE INDEX invitations_tenant ON invitations (tenant_id, created_at);
          ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
          ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
          CREATE POLICY tenant_own ON invitations USING (tenant_id = app_tenant()) WITH CHECK (tenant_id = app_tenant());
        `.execute(db)
        await sql`GRANT SELECT, INSERT, UPDATE ON invitations TO ${role}`.execute(db)
      }
    },
    '005_signup_invitations': {
      async up (db) {
        // Proof of the email before any account: POST /tenants makes the tenant and mails its
        // owner an invitation (made by nobody), which POST /invitations/accept turns into the
        // account and the membership, like any other invitation.
        await sql`
          ALTER TABLE invitations DROP CONSTRAINT invitations_role_check,
            ADD CONSTRAINT invitations_role_check CHECK (role IN ('owner', 'admin', 'member')),
            ALTER COLUMN created_by DROP NOT NULL;
        `.execute(db)
      }
    },
    // 006, not 005: 005 is the HTTP side's (the sign-up's invitations), applied before this one.
    '006_least_privilege': {
      async up (db) {
        // SECURITY DEFINER functions run as their owner: with a search_path of `public` alone,
        // pg_temp is searched first, and a temporary table named `users` (with a trigger) would
        // run the caller's code as the owner. PostgreSQL's rule: pg_temp last, and here every name
        // schema-qualified too. The password hash never leaves these functions.
        await sql`
          CREATE OR REPLACE FUNCTION create_user(p_email text, p_password_hash text) RETURNS uuid
            LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
            AS $$ INSERT INTO public.users (email, password_hash) VALUES (p_email, p_password_hash) RETURNING id $$;
          CREATE OR REPLACE FUNCTION user_id_by_email(p_email text) RETURNS uuid
            LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
            AS $$ SELECT id FROM public.users WHERE email = p_email $$;
          -- password_settings: the stored hash without its key (scheme, cost and salt: not secret),
          -- which the app hashes a password with; NULL for no such account.
          CREATE FUNCTION password_settings(p_user_id uuid) RETURNS text
            LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
            AS $$ SELECT pg_catalog.regexp_replace(password_hash, '[$][^$]*$', '') FROM public.users WHERE id = p_user_id $$;
          -- password_matches: whether the app's hash of a password, made with those settings, is the
          -- stored one. (A plain comparison: the caller cannot choose scrypt's output byte by byte.)
          CREATE FUNCTION password_matches(p_user_id uuid, p_password_hash text) RETURNS boolean
            LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
            AS $$ SELECT coalesce((SELECT password_hash = p_password_hash FROM public.users WHERE id = p_user_id), false) $$;
          -- The context functions are SECURITY INVOKER (they run as the caller), yet the same rule
          -- costs nothing.
          ALTER FUNCTION app_tenant() SET search_path = pg_catalog, pg_temp;
          ALTER FUNCTION app_user() SET search_path = pg_catalog, pg_temp;

          -- Row-level security binds the owner too. The owner's functions above see every account
          -- by this policy, said out loud, instead of by the owner's silent exemption.
          ALTER TABLE users FORCE ROW LEVEL SECURITY;
          CREATE POLICY definer_functions ON users TO CURRENT_USER USING (true) WITH CHECK (true);
          DROP POLICY update_self ON users;

          -- PostgreSQL lets PUBLIC execute every new function: no more, for this owner's.
          ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
          REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
          -- Nobody but the owner creates anything in public (PUBLIC could before PostgreSQL 15).
          REVOKE ALL ON SCHEMA public FROM PUBLIC;
        `.execute(db)
        // Accounts: the app reads ids and emails (of the accounts row-level security shows it),
        // and no hash; it writes accounts only through create_user.
        await sql`REVOKE ALL ON users FROM ${role}`.execute(db)
        await sql`GRANT SELECT (id, email, created_at) ON users TO ${role}`.execute(db)
        await sql`GRANT EXECUTE ON FUNCTION create_user(text, text), user_id_by_email(text), password_settings(uuid),
          password_matches(uuid, text), app_tenant(), app_user() TO ${role}`.execute(db)
        // No temporary objects, and no other role's way in: the database's PUBLIC privileges
        // (CONNECT and TEMP by default) are taken, and CONNECT given to the app role alone. Only
        // the database's owner may; a setup whose migrating role does not own it keeps PostgreSQL's.
        const { rows } = await sql<{ name: string, owns: boolean }>`
          SELECT datname AS name, pg_has_role(datdba, 'MEMBER') AS owns FROM pg_database WHERE datname = current_database()
        `.execute(db)
        if (rows[0].owns) {
          await sql`REVOKE ALL ON DATABASE ${sql.id(rows[0].name)} FROM PUBLIC`.execute(db)
          await sql`GRANT CONNECT ON DATABASE ${sql.id(rows[0].name)} TO ${role}`.execute(db)
        }
      }
    }
  }
}

/**
 * Migrates the schema to the latest version (or to `target`, a migration's name), inside the
 * owner's setup transaction (see setup.ts, which creates `appRole` first).
 */
export async function migrate (owner: Transaction<any>, appRole: string, target?: string): Promise<void> {
  const migrator = new Migrator({ db: owner, provider: { getMigrations: async () => migrations(appRole) } })
  const { error, results } = target === undefined ? await migrator.migrateToLatest() : await migrator.migrateTo(target)
  if (error !== undefined) {
    const failed = results?.find((result) => result.status === 'Error')
    throw new Error(`migration ${failed?.migrationName ?? '(unknown)'} failed: ${(error as Error).message}`, { cause: error })
  }
}
