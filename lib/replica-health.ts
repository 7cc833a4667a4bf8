import type pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import type { ConnectionSource } from './connection-source.js'
import { parseLsn } from './lsn.js'

/**
 * What one replica reports: whether it is in recovery, how far it has replayed, and how far
 * behind that is. Lag is the age of the last replayed commit while WAL is waiting to be
 * replayed; nothing waiting is no lag (an idle primary sends no commits to age). A server not in
 * recovery (the primary itself, as a replica in development) is measured by its own position.
 */
const CHECK = `SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END::text AS replayed,
  CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
    ELSE coalesce(floor(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000), 0) END::float8 AS lag`

/** The primary's own position, to tell a position it has not reached (another server's, or made up) from one not yet replayed. */
const PRIMARY_POSITION = 'SELECT pg_current_wal_insert_lsn()::text AS lsn'

/** Why a replica is left out: its connects or checks fail, or it lags more than maxReplicaLagMillis. */
export type LeftOut = 'down' | 'lag'

/** One replica as last seen by its check. */
export class Replica {
  readonly source: ConnectionSource
  /** Null while it can serve; why not, otherwise. Down until its first check says otherwise. */
  leftOut: LeftOut | null = 'down'
  /** Its replay lag at the last check, in milliseconds; null while it is down. */
  lagMillis: number | null = null
  /** How far it had replayed at the last check; null while it is down. */
  replayed: bigint | null = null
  /** The check running now, so that two never run at once on one replica. */
  checking: Promise<void> | null = null

  constructor (source: ConnectionSource) {
    this.source = source
  }
}

/** A read waiting for a replica to replay `lsn`; answered with the replica, or null at its deadline. */
interface Waiter { lsn: bigint, answer: (replica: Replica | null) => void }

/**
 * Keeps each replica's health and replay position, read by a timer (unref'ed, stopped at close),
 * never by a request: a request reads what the last check saw. While reads wait for a replica to
 * replay their position, the replicas are read every few milliseconds instead, for all of them at once.
 */
export class ReplicaHealth {
  readonly replicas: Replica[]
  readonly #primary: pg.Pool
  readonly #maxLagMillis: number
  readonly #checkMillis: number
  readonly #log: FastifyBaseLogger
  /** The highest position the primary is known to have reached: its last check, or a commit seen since. */
  primaryPosition = 0n
  readonly #waiters = new Set<Waiter>()
  #timer: NodeJS.Timeout | undefined
  #polling = false
  #closed = false

  constructor (primary: pg.Pool, replicas: ConnectionSource[], settings: { maxLagMillis: number, checkMillis: number }, log: FastifyBaseLogger) {
    this.#primary = primary
    this.replicas = replicas.map((source) => new Replica(source))
    this.#maxLagMillis = settings.maxLagMillis
    this.#checkMillis = settings.checkMillis
    this.#log = log
  }

  /** Checks every replica once (a failure leaves it out; nothing throws), then every checkMillis. */
  async start (): Promise<void> {
    await this.#checkAll()
    this.#schedule()
  }

  #schedule (): void {
    if (this.#closed) return
    // No check rejects: each one's failure is the replica's (or the primary's) state.
    this.#timer = setTimeout(() => { this.#checkAll().then(() => { this.#schedule() }) }, this.#checkMillis).unref()
  }

  close (): void {
    this.#closed = true
    clearTimeout(this.#timer)
    for (const waiter of this.#waiters) waiter.answer(null)
    this.#waiters.clear()
  }

  /** The replicas that may serve a read now. */
  serving (): Replica[] {
    return this.replicas.filter((replica) => replica.leftOut === null)
  }

  /** Why no replica serves: 'down' when every one is down, else 'lag'. */
  whyNone (): LeftOut {
    return this.replicas.every((replica) => replica.leftOut === 'down') ? 'down' : 'lag'
  }

  /** A commit on the primary reached `lsn`. */
  committed (lsn: bigint): void {
    if (lsn > this.primaryPosition) this.primaryPosition = lsn
  }

  /** A connect to `replica` failed for a request: it is left out until a check finds it back. */
  failed (replica: Replica, error: Error): void {
    if (replica.leftOut !== 'down') this.#log.warn({ err: error }, 'fastify-db-session: a read replica could not be reached; reads go elsewhere until it answers again')
    replica.leftOut = 'down'
    replica.lagMillis = null
    replica.replayed = null
  }

  /**
   * A serving replica that replays `lsn` within `millis`, or null. The replicas are read every few
   * milliseconds while anyone waits.
   */
  waitFor (lsn: bigint, millis: number): Promise<Replica | null> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter)
        resolve(null)
      }, millis)
      const waiter: Waiter = {
        lsn,
        answer: (replica) => {
          clearTimeout(timer)
          resolve(replica)
        }
      }
      this.#waiters.add(waiter)
      this.#poll()
    })
  }

  /** Reads the replicas again and again while reads wait, answering each as soon as a replica has replayed its position. */
  #poll (): void {
    if (this.#polling) return
    this.#polling = true
    const round = (): void => {
      Promise.all(this.replicas.map((replica) => this.#check(replica))).then(() => {
        for (const waiter of this.#waiters) {
          const replica = this.serving().find((candidate) => (candidate.replayed as bigint) >= waiter.lsn)
          if (replica === undefined) continue
          this.#waiters.delete(waiter)
          waiter.answer(replica)
        }
        if (this.#waiters.size === 0) this.#polling = false
        else setTimeout(round, 5)
      })
    }
    round()
  }

  async #checkAll (): Promise<void> {
    await Promise.all([this.#checkPrimary(), ...this.replicas.map((replica) => this.#check(replica))])
  }

  async #checkPrimary (): Promise<void> {
    try {
      const { rows: [{ lsn }] } = await this.#primary.query(PRIMARY_POSITION)
      this.committed(parseLsn(lsn))
    } catch {
      // The primary's own failures are the requests' to report.
    }
  }

  /**
   * Reads the replica, or joins the read under way; answers within the replica's acquire deadline
   * either way. A read still waiting then (a replica that accepts connections and never answers,
   * whose connect may take connectTimeoutMillis) leaves the replica out, and goes on: its outcome,
   * when it comes, is the replica's state. One read at a time per replica, however slow.
   */
  #check (replica: Replica): Promise<void> {
    replica.checking ??= this.#read(replica).finally(() => { replica.checking = null })
    const millis = replica.source.deadlineMillis
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.failed(replica, new Error(`the replica's check got no answer within ${millis} ms`))
        resolve()
      }, millis).unref()
    })
    return Promise.race([replica.checking, late]).finally(() => clearTimeout(timer))
  }

  /** Reads one replica's state; never rejects: a failure leaves the replica out. */
  async #read (replica: Replica): Promise<void> {
    try {
      const { rows: [row] } = await replica.source.pool.query<{ replayed: string, lag: number }>(CHECK)
      // A standby in recovery always has a replay position (where its recovery started, at least).
      const replayed = parseLsn(row.replayed)
      const wasOut = replica.leftOut
      replica.lagMillis = row.lag
      replica.replayed = replayed
      replica.leftOut = row.lag > this.#maxLagMillis ? 'lag' : null
      if (wasOut !== replica.leftOut && replica.leftOut === 'lag') {
        this.#log.warn(`fastify-db-session: a read replica lags ${row.lag} ms, more than maxReplicaLagMillis; reads go elsewhere until it catches up`)
      }
    } catch (error) {
      this.failed(replica, error as Error)
    }
  }
}
