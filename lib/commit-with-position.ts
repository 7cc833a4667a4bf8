import type pg from 'pg'
import { inFailedTransaction, PgQueryClass } from './pg-internals.js'
import type { PgConnection } from './pg-internals.js'

/** COMMIT's command tag ('COMMIT', or 'ROLLBACK' for a failed transaction), and the position it reached when the transaction wrote. */
export interface PositionedCommit {
  command: string
  /** The primary's WAL insert position right after the COMMIT (at or past its commit record), as `X/Y`; null when the transaction wrote nothing. */
  lsn: string | null
}

type Callback = (error: Error | null, result?: PositionedCommit) => void

/**
 * COMMIT with what read-your-writes needs, in COMMIT's own round trip: before it, whether the
 * transaction wrote (it has a transaction id only then); after it, the WAL insert position, which
 * is past the commit record. Three Parse/Bind/Execute and one Sync; no Describe, so the two
 * one-column rows arrive without a RowDescription and are read as the text they are. Overrides
 * pg's private Query methods, declared in pg-internals.ts, as begin-with-query.ts does.
 */
class CommitWithPosition extends PgQueryClass {
  /** CommandCompletes seen: 1 after the check, 2 after COMMIT, 3 after the position. */
  #completed = 0
  #wrote = false
  #command = ''
  #lsn: string | null = null
  readonly #client: pg.ClientBase

  constructor (client: pg.ClientBase, callback: Callback) {
    super('SELECT pg_current_wal_insert_lsn()::text', [])
    this.queryMode = 'extended'
    this.#client = client
    // pg calls it once: at the error, or at the ReadyForQuery (no value of ours can fail to be written).
    this.callback = (error) => {
      // Once COMMIT has answered, the transaction is committed, whatever befalls the position.
      if (error !== null && this.#completed < 2) callback(error)
      else callback(null, { command: this.#command, lsn: this.#wrote ? this.#lsn : null })
    }
  }

  /** Called when pg writes the query: after the ReadyForQuery of the statement before, whose status is then known. */
  override prepare (connection: PgConnection): void {
    // In a failed transaction every statement but COMMIT fails: it alone goes, and only rolls back.
    if (inFailedTransaction(this.#client)) {
      this.#completed = 1
      this.text = 'COMMIT'
      super.prepare(connection)
      return
    }
    for (const text of ['SELECT pg_current_xact_id_if_assigned() IS NOT NULL', 'COMMIT']) {
      connection.parse({ text })
      connection.bind({})
      connection.execute({})
    }
    super.prepare(connection)
  }

  override handleDataRow (message: unknown): void {
    const [value] = (message as { fields: Array<string | null> }).fields
    if (this.#completed === 0) this.#wrote = value === 't'
    else this.#lsn = value
  }

  override handleCommandComplete (message: unknown): void {
    this.#completed++
    if (this.#completed === 2) this.#command = (message as { text: string }).text
  }
}

/** COMMIT on `client` with the position it reached (see CommitWithPosition), in one round trip. */
export function commitWithPosition (client: pg.ClientBase): Promise<PositionedCommit> {
  return new Promise((resolve, reject) => {
    client.query(new CommitWithPosition(client, (error, result) => {
      if (error === null) resolve(result as PositionedCommit)
      else reject(error)
    }) as unknown as pg.Submittable)
  })
}
