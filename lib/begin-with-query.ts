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
 *
 * With a statement name (preparedStatements), the query is a named statement, parsed once per
 * connection. pg records a name as parsed at the first ParseComplete of the batch, which here is
 * a prelude statement's: the name is shown to pg only while the query is written and once the
 * prelude has answered.
 */
class BeginWithQuery extends PgQueryClass {
  readonly #prelude: readonly string[]
  /** Statements before the query whose CommandComplete has not arrived yet. */
  #preludeLeft: number
  /** True while pg writes the query itself: an error then is the query's (a value pg cannot send). */
  #writingQuery = false
  #settled = false
  /** The prepared statement's name, or undefined: an unnamed statement. */
  #statementName: string | undefined

  constructor (prelude: readonly string[], text: string, values: readonly unknown[], callback: Callback, statementName: string | undefined) {
    // Text and values rather than a config object, which pg copies property by property.
    super(text, values)
    // Even without parameters: BEGIN and the query must end with the same Sync.
    this.queryMode = 'extended'
    this.#prelude = prelude
    this.#preludeLeft = prelude.length
    this.#statementName = statementName
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
    this.name = this.#statementName
    this.#writingQuery = true
    super.prepare(connection)
    this.#writingQuery = false
    if (this.#preludeLeft > 0) this.name = undefined
  }

  override handleDataRow (message: unknown): void {
    if (this.#preludeLeft === 0) super.handleDataRow(message)
  }

  override handleCommandComplete (message: unknown, connection: PgConnection): void {
    if (this.#preludeLeft > 0) {
      // The query's own ParseComplete, if it was parsed, comes next.
      if (--this.#preludeLeft === 0) this.name = this.#statementName
    } else {
      super.handleCommandComplete(message, connection)
    }
  }

  override handleError (error: Error, connection: PgConnection): void {
    const name = this.#statementName
    if (name !== undefined && this.#writingQuery) {
      // pg could not send a value, and closed the statement (Close) behind the Parse: on this
      // connection it does not exist any more, and its ParseComplete must not say it does.
      this.#statementName = undefined
      this.name = undefined
      delete connection.parsedStatements[name]
      delete connection.submittedNamedStatements[name]
    } else if (name !== undefined && this.#preludeLeft > 0) {
      // PostgreSQL skipped the query's Parse after the prelude's error.
      delete connection.submittedNamedStatements[name]
    } else if (name !== undefined && (error as { code?: unknown }).code === '26000') {
      // The server lost the statement pg had parsed (a DEALLOCATE or DISCARD on the connection):
      // the next run parses it again rather than failing the same way for the connection's life.
      delete connection.parsedStatements[name]
    }
    super.handleError(this.#preludeLeft > 0 && !this.#writingQuery ? new BeginFailure(error) : error, connection)
  }
}

/**
 * Runs `prelude` (BEGIN, then settings; or nothing) and the query on `client` in one round trip,
 * the query as the named statement `statementName` if given. Rejects with a BeginFailure when a
 * prelude statement failed (or the connection was lost before they all ran); any other error is
 * the query's, inside the opened transaction.
 */
export function beginWithQuery (client: pg.ClientBase, prelude: readonly string[], text: string, values: readonly unknown[], statementName?: string): Promise<pg.QueryResult> {
  return new Promise((resolve, reject) => {
    client.query(new BeginWithQuery(prelude, text, values, (error, result) => {
      if (error === null) resolve(result as pg.QueryResult)
      else reject(error)
    }, statementName) as unknown as pg.Submittable)
  })
}

/**
 * Whether the query can follow BEGIN in one batch: the extended protocol takes one statement
 * per Parse, so parameterless SQL with a semicolon (perhaps several statements) goes on its own.
 */
export function canFollowBegin (text: string, values: readonly unknown[]): boolean {
  return values.length > 0 || !text.includes(';')
}
