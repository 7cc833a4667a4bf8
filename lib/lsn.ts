import { InvalidPositionError } from './errors.js'

/**
 * WAL positions (PostgreSQL's pg_lsn, written `X/Y`: the high and low 32 bits in hex) as bigints,
 * which compare with < and >. The text form is what PostgreSQL returns and what the
 * `db-session-lsn` header carries.
 */
const FORM = /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/

/** Whether `text` is a position as PostgreSQL writes it. */
export function isLsn (text: unknown): text is string {
  return typeof text === 'string' && FORM.test(text)
}

/** A position as PostgreSQL writes it; throws FST_DB_SESSION_INVALID_POSITION (400) for anything else. */
export function parseLsn (text: string): bigint {
  if (!FORM.test(text)) throw new InvalidPositionError(text.length > 40 ? text.slice(0, 40) + '…' : text)
  const slash = text.indexOf('/')
  return (BigInt('0x' + text.slice(0, slash)) << 32n) | BigInt('0x' + text.slice(slash + 1))
}

/** The `X/Y` text of a position, as PostgreSQL writes it. */
export function formatLsn (lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xFFFFFFFFn).toString(16).toUpperCase()}`
}
