import { randomBytes } from 'node:crypto'
import type { CompiledQuery } from 'kysely'
import { InvalidOptionError } from './errors.js'

/*
 * The `preparedStatements` option: a registration's queries with parameters go to PostgreSQL as
 * named statements, parsed and planned once per connection rather than at every run (pg skips
 * the Parse of a name its connection has already parsed). Names are drawn from one counter per
 * process, so that registrations sharing a pool never give one name two texts.
 */

/**
 * Each process's names have a random part of their own: a pooler that passes one server
 * connection from process to process without keeping their statements apart (PgBouncer before
 * 1.21 in transaction mode) then fails our query with "prepared statement does not exist",
 * where a name another process prepared there would run that process's text with our values.
 */
const NAME_PREFIX = `fastify_db_session_${randomBytes(6).toString('hex')}_`

export const PREPARED_STATEMENTS_DEFAULTS = { max: 100 } as const

/**
 * SQLSTATE 0A000 raised where PostgreSQL revalidates a cached plan: 'cached plan must not change
 * result type', a table a prepared statement reads changed its columns. Told by the routine, which
 * PostgreSQL never translates (the message is in the server's lc_messages).
 */
const REVALIDATE_ROUTINE = 'RevalidateCachedQuery'

let issued = 0

/** Which query texts are sent as named statements, and under which names. */
export class PreparedStatements {
  readonly #names = new Map<string, string>()
  readonly #max: number

  constructor (max: number) {
    this.#max = max
  }

  /**
   * The name `query` is prepared under, or undefined: it has no parameters (one-off SQL, DDL,
   * the plugin's own statements), or `max` texts already have names.
   */
  nameFor (query: CompiledQuery): string | undefined {
    if (query.parameters.length === 0) return undefined
    let name = this.#names.get(query.sql)
    if (name === undefined && this.#names.size < this.#max) {
      name = `${NAME_PREFIX}${++issued}`
      this.#names.set(query.sql, name)
    }
    return name
  }

  /**
   * A named statement failed because its tables' columns changed under it (PostgreSQL then fails
   * it on every run): later runs prepare the text afresh under a new name, on every connection.
   */
  failed (sql: string, error: unknown): void {
    const { code, routine } = error as { code?: unknown, routine?: unknown }
    if (code === '0A000' && routine === REVALIDATE_ROUTINE && this.#names.has(sql)) {
      this.#names.set(sql, `${NAME_PREFIX}${++issued}`)
    }
  }
}

/** Checks the option: false (the default), true, or { max }: at most this many texts get names. */
export function preparedStatementsOption (value: unknown): PreparedStatements | null {
  if (value === undefined || value === false) return null
  if (value === true) return new PreparedStatements(PREPARED_STATEMENTS_DEFAULTS.max)
  const expected = `preparedStatements must be true, false or { max } (how many query texts to prepare, default ${PREPARED_STATEMENTS_DEFAULTS.max})`
  if (value === null || typeof value !== 'object') throw new InvalidOptionError(`${expected}; instead got '${String(value)}'`)
  const unknown = Object.keys(value).find((key) => key !== 'max')
  if (unknown !== undefined) throw new InvalidOptionError(`unknown option 'preparedStatements.${unknown}'; known is max`)
  const { max = PREPARED_STATEMENTS_DEFAULTS.max } = value as { max?: unknown }
  if (!Number.isSafeInteger(max) || (max as number) < 1) {
    throw new InvalidOptionError(`preparedStatements.max must be an integer of at least 1; instead got '${String(max)}'`)
  }
  return new PreparedStatements(max as number)
}
