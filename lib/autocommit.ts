import type pg from 'pg'
import type { CompiledQuery, QueryResult } from 'kysely'
import { BeginFailure, canFollowBegin } from './begin-with-query.js'
import { InvalidOptionError } from './errors.js'
import { kyselyResult } from './lease.js'
import type { Lease } from './lease.js'
import { refuseSessionState, setConfigCalls } from './sql.js'

/*
 * `autocommit: true`: a read-only unit of work without BEGIN or COMMIT. Each query travels behind
 * one SELECT of transaction-local set_config calls (read only, the statement timeout, the context)
 * and one Sync ends both: PostgreSQL runs the statements before a Sync as one implicit
 * transaction, so the settings hold for the query and end with it. At read committed a read-only
 * transaction adds nothing to a single statement but its BEGIN and COMMIT round trips.
 */

/** Refuses autocommit where a statement could see or do more than in a transaction. */
export function checkAutocommit (autocommit: unknown, accessMode: string | undefined, isolationLevel: string | undefined, where: string): boolean {
  if (autocommit === undefined || autocommit === false) return false
  if (autocommit !== true) {
    throw new InvalidOptionError(`${where}autocommit must be true or false; instead got '${String(autocommit)}'`)
  }
  if (accessMode !== 'read only') {
    throw new InvalidOptionError(`${where}autocommit: true needs accessMode: 'read only' (a unit of work that writes needs its transaction); instead got accessMode '${String(accessMode)}'`)
  }
  if (isolationLevel !== undefined && isolationLevel !== 'read committed') {
    throw new InvalidOptionError(`${where}autocommit: true needs isolationLevel 'read committed' or unset (each statement takes its own snapshot); instead got isolationLevel '${isolationLevel}'`)
  }
  return true
}

/** The set_config calls every query of an autocommit unit runs behind, without their SELECT. */
export function autocommitSettings (statementTimeoutMillis: number | undefined): string {
  let settings = "set_config('transaction_read_only', 'on', true)"
  if (statementTimeoutMillis !== undefined) settings += `, set_config('statement_timeout', '${statementTimeoutMillis}', true)`
  return settings
}

/** The one statement sent before each query: the settings and the unit's context (a `SELECT set_config(…)` statement), in one SELECT. */
export function autocommitPrelude (settings: string, context: string | null): readonly string[] {
  return [context === null ? `SELECT ${settings}` : `SELECT ${settings}, ${setConfigCalls(context)}`]
}

/**
 * One query of an autocommit unit on `lease`, behind `prelude`, in one round trip. Errors are the
 * query's (queryError), also when a prelude statement failed: the connection was already the unit's.
 */
export async function runAutocommit<R> (lease: Lease, prelude: readonly string[], compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
  refuseSessionState(compiledQuery.sql)
  let result: pg.QueryResult | pg.QueryResult[]
  try {
    if (canFollowBegin(compiledQuery.sql, compiledQuery.parameters)) {
      result = await lease.runAfter(prelude, compiledQuery)
    } else {
      // Parameterless text with a semicolon goes as one simple-protocol string: PostgreSQL runs
      // such a string as one implicit transaction too, so the settings hold for all of it.
      const results = await lease.command(`${prelude.join('; ')}; ${compiledQuery.sql}`) as unknown as pg.QueryResult[]
      const own = results.slice(prelude.length)
      result = own.length === 1 ? own[0] : own
    }
  } catch (error) {
    throw lease.queryError(error instanceof BeginFailure ? error.cause as Error : error as Error, compiledQuery.sql)
  }
  return kyselyResult(result as pg.QueryResult)
}
