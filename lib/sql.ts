import pg from 'pg'
import type { DbContextValue } from '../index.js'
import { InvalidContextError, SessionStateError } from './errors.js'

/*
 * The SQL text the plugin writes into a transaction, and the session-level SQL it refuses to
 * send. BEGIN and its SET LOCAL settings are built from checked settings in transaction-settings.ts.
 */

/**
 * Statements whose effect outlives the transaction on its connection: a session-level SET or
 * RESET, set_config(…, false), LISTEN, PREPARE, DEALLOCATE, DISCARD, and session advisory locks. The next
 * request to take the pooled connection would inherit them (behind PgBouncer in transaction mode,
 * any client, and a prepared statement or a LISTEN would be on another server connection). Their
 * transaction-scoped forms pass: SET LOCAL, SET TRANSACTION, SET CONSTRAINTS, set_config(…, true),
 * pg_advisory_xact_lock. A heuristic on the statement's text: it finds these forms as written, not
 * every way SQL can reach them.
 */
const SESSION_STATE = /^\s*(?:set\s+(?!local\b|transaction\b|constraints\b)|reset\b|listen\b|prepare\b|deallocate\b|discard\b)|\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(|\bset_config\s*\([^)]*,\s*false\s*\)/i

/** Throws FST_DB_SESSION_SESSION_STATE for a statement that would outlive the transaction. */
export function refuseSessionState (sql: string): void {
  if (SESSION_STATE.test(sql)) throw new SessionStateError(sql.trim().slice(0, 80))
}

/**
 * Statements whose effect lasts until COMMIT even in a read-only transaction: advisory transaction
 * locks, LOCK TABLE, NOTIFY (delivered at COMMIT). (Row locks, FOR UPDATE or SHARE, are refused in
 * a read-only transaction.) A response
 * sent before such a COMMIT could reach its client while the lock is still held. A heuristic on
 * the text, erring towards waiting: a false match only keeps the usual order.
 */
const HELD_UNTIL_COMMIT = /\bpg_(?:try_)?advisory_xact_lock(?:_shared)?\s*\(|\bnotify\b|\bpg_notify\s*\(|^\s*lock\b/i

/** Whether a statement leaves something held until its transaction's COMMIT. */
export function holdsUntilCommit (sql: string): boolean {
  return HELD_UNTIL_COMMIT.test(sql)
}

const LONE_NAME = 'SET LOCAL application_name = '

/**
 * The statement that follows BEGIN in the same round trip: one SELECT of transaction-local
 * set_config calls, or SET LOCAL for a lone application_name (never a plain SET, which would
 * outlive the transaction on a pooled connection).
 * Values are quoted by pg's escapeLiteral, so that the statement is complete in itself: it
 * travels as a prelude before the first query, or in a simple-protocol string with BEGIN.
 * null and undefined set the empty string, so a value never survives from an earlier request.
 */
export function contextStatement (values: Record<string, DbContextValue>): string {
  const names = Object.keys(values)
  // The common case, application_name alone, as SET LOCAL: a utility statement, which PostgreSQL
  // runs without planning a SELECT (half the cost per transaction, measured on one connection).
  if (names.length === 1 && names[0] === 'application_name') {
    return `${LONE_NAME}${pg.escapeLiteral(settingText('application_name', values.application_name))}`
  }
  let sql = 'SELECT '
  let first = true
  for (const name of names) {
    sql += `${first ? '' : ', '}set_config(${pg.escapeLiteral(name)}, ${pg.escapeLiteral(settingText(name, values[name]))}, true)`
    first = false
  }
  return sql
}

/**
 * The set_config calls of a contextStatement, without their SELECT, for a statement of its own
 * that carries more of them (autocommit.ts): SET LOCAL, outside BEGIN, would only warn.
 */
export function setConfigCalls (statement: string): string {
  if (statement.startsWith(LONE_NAME)) return `set_config('application_name', ${statement.slice(LONE_NAME.length)}, true)`
  return statement.slice('SELECT '.length)
}

function settingText (name: string, value: DbContextValue): string {
  const text = value === null || value === undefined ? '' : String(value)
  if (text.includes('\0')) throw new InvalidContextError(name)
  return text
}

/**
 * A savepoint's three statements. Names are the plugin's own and numbered per unit of work
 * (never user text): PostgreSQL allows a name to repeat, but a distinct one per savepoint keeps
 * RELEASE and ROLLBACK TO pointed at the right one.
 */
export function savepointStatements (id: number): { open: string, release: string, rollback: string } {
  const name = `fastify_db_session_${id}`
  return { open: `SAVEPOINT ${name}`, release: `RELEASE SAVEPOINT ${name}`, rollback: `ROLLBACK TO SAVEPOINT ${name}` }
}
