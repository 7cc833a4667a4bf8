import type pg from 'pg'
import { PgQueryClass } from './pg-internals.js'
import type { PgConnection } from './pg-internals.js'

/** BEGIN or one of the statements sent with it failed: no transaction was opened for the query. */
export class BeginFailure extends Error {
  constructor (cause: Error) {
    super(cause.message, { cause })
  }
}

type Callback = (error: Error | null, result?: pg.QueryResult) => void

/**
 * A transaction's first query, written to PostgreSQL behind BEGIN and its settings and answered
 * in the same round trip: each statement is its own Parse, Bind and Execute, and one Sync ends
 * them all (PostgreSQL skips the rest of the batch after an error). pg's Query collects the
 * query's result; the answers to the statements before it are skipped. It overrides pg's
 * private Query methods, declared in pg-internals.ts.
 */
class BeginWithQuery extends PgQueryClass {
  readonly #prelude: readonly string[]
  /** Statements before the query whose CommandComplete has not arrived yet. */
  #preludeLeft: number
  /** True while pg writes the query itself: an error then is the query's (a value pg cannot send). */
  #writingQuery = false
  #settled = false

  constructor (prelude: readonly string[], text: string, values: readonly unknown[], callback: Callback) {
    // Text and values rather than a config object, which pg copies property by property.
    super(text, values)
    // Even without parameters: BEGIN and the query must end with the same Sync.
    this.queryMode = 'extended'
    this.#prelude = prelude
    this.#preludeLeft = prelude.length
    this.callback = (error, result) => {
      // pg reports a value it could not write at once, and later the ReadyForQuery after it.
      if (this.#settled) return
      this.#settled = true
      callback(error, result)
    }
  }

  override prepare (connection: PgConnection): void {
    for (const text of this.#prelude) {
      connection.parse({ text })
      connection.bind({})
      connection.execute({})
    }
    this.#writingQuery = true
    super.prepare(connection)
    this.#writingQuery = false
  }

  override handleDataRow (message: unknown): void {
    if (this.#preludeLeft === 0) super.handleDataRow(message)
  }

  override handleCommandComplete (message: unknown, connection: PgConnection): void {
    if (this.#preludeLeft > 0) this.#preludeLeft--
    else super.handleCommandComplete(message, connection)
  }

  override handleError (error: Error, connection: PgConnection): void {
    super.handleError(this.#preludeLeft > 0 && !this.#writingQuery ? new BeginFailure(error) : error, connection)
  }
}

/**
 * Runs `prelude` (BEGIN, then settings) and the query on `client` in one round trip. Rejects
 * with a BeginFailure when a prelude statement failed (or the connection was lost before they
 * all ran); any other error is the query's, inside the opened transaction.
 */
export function beginWithQuery (client: pg.ClientBase, prelude: readonly string[], text: string, values: readonly unknown[]): Promise<pg.QueryResult> {
  return new Promise((resolve, reject) => {
    client.query(new BeginWithQuery(prelude, text, values, (error, result) => {
      if (error === null) resolve(result as pg.QueryResult)
      else reject(error)
    }) as unknown as pg.Submittable)
  })
}

/**
 * Whether the query can follow BEGIN in one batch: the extended protocol takes one statement
 * per Parse, so parameterless SQL with a semicolon (perhaps several statements) goes on its own.
 */
export function canFollowBegin (text: string, values: readonly unknown[]): boolean {
  return values.length > 0 || !text.includes(';')
}
