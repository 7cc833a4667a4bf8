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

/**
 * Whether an error of a statement that was prepared may come from the statement having gone
 * stale under DDL rather than from its values: the changed result type (0A000), class 42 (a
 * parameter type fixed at the first Parse that no longer fits a changed column: 42883, 42804),
 * XX000 (a type the statement was planned with was dropped and made again: "cache lookup failed").
 */
function stale (error: unknown): boolean {
  const { code, routine } = error as { code?: unknown, routine?: unknown }
  // String(): an error of the connection's (no SQLSTATE) reads 'undefined', stale in no way.
  const sqlState = String(code)
  return (sqlState === '0A000' && routine === REVALIDATE_ROUTINE) || sqlState.startsWith('42') || sqlState === 'XX000'
}

let issued = 0
const nextName = (): string => `${NAME_PREFIX}${++issued}`

/** Which query texts are sent as named statements, and under which names. */
export class PreparedStatements {
  /** Text to name; null: the text failed stale twice and runs unnamed from then on. */
  readonly #names = new Map<string, string | null>()
  /** Texts already given a new name once. */
  readonly #renamed = new Set<string>()
  readonly #max: number

  constructor (max: number) {
    this.#max = max
  }

  /**
   * The name `query` is prepared under, or undefined: it has no parameters (one-off SQL, DDL,
   * the plugin's own statements), `max` texts already have names, or it went stale twice.
   */
  nameFor (query: CompiledQuery): string | undefined {
    if (query.parameters.length === 0) return undefined
    let name = this.#names.get(query.sql)
    if (name === undefined && this.#names.size < this.#max) {
      name = nextName()
      this.#names.set(query.sql, name)
    }
    return name ?? undefined
  }

  /**
   * A query failed. If its text ran as a statement already prepared on that connection
   * (`prepared(name)`: so not a Parse that failed) and the error says it may have gone stale (a
   * table or type changed under it: PostgreSQL then fails it on every run), later runs prepare it
   * afresh under a new name, on every connection; the second time, it runs unnamed from then on
   * (a per-request search_path over schemas of different shapes would otherwise rename it forever).
   */
  failed (sql: string, error: unknown, prepared: (name: string) => boolean): void {
    const name = this.#names.get(sql)
    if (name === undefined || name === null || !prepared(name) || !stale(error)) return
    if (this.#renamed.has(sql)) {
      this.#names.set(sql, null)
      return
    }
    this.#renamed.add(sql)
    this.#names.set(sql, nextName())
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
