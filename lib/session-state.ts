import { SessionStateError } from './errors.js'

/**
 * Statements whose effect outlives the transaction on its connection: a session-level SET or
 * RESET, set_config(…, false), LISTEN, PREPARE, DISCARD, and session advisory locks. The next
 * request to take the pooled connection would inherit them (behind PgBouncer in transaction mode,
 * any client, and a prepared statement or a LISTEN would be on another server connection). Their
 * transaction-scoped forms pass: SET LOCAL, SET TRANSACTION, SET CONSTRAINTS, set_config(…, true),
 * pg_advisory_xact_lock. A heuristic on the statement's text: it finds these forms as written, not
 * every way SQL can reach them.
 */
const SESSION_STATE = /^\s*(?:set\s+(?!local\b|transaction\b|constraints\b)|reset\b|listen\b|prepare\b|discard\b)|\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(|\bset_config\s*\([^)]*,\s*false\s*\)/i

/** Throws FST_DB_SESSION_SESSION_STATE for a statement that would outlive the transaction. */
export function refuseSessionState (sql: string): void {
  if (SESSION_STATE.test(sql)) throw new SessionStateError(sql.trim().slice(0, 80))
}
