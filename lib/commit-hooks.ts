import { InvalidOptionError } from './errors.js'
import type { LeakOwner } from './leak-watch.js'
import type { Telemetry } from './metrics.js'
import type { Outcome } from './unit-of-work.js'

/** A callback given to afterCommit or afterRollback: no arguments, sync or async. */
export type HookCallback = () => unknown

/** Who owns the callbacks: where a failing one is logged (its logger, route, and request id if any). */
export interface HookOwner extends LeakOwner {
  /** The request's id, for the log line; undefined outside a request. */
  readonly requestId?: string
}

/** Fails at registration, where the mistake is, rather than when the callback would run. */
export function checkCallback (fn: unknown, name: string): void {
  if (typeof fn !== 'function') throw new InvalidOptionError(`${name} expects a function; instead got '${String(fn)}'`)
}

interface Entry {
  readonly afterCommit: boolean
  readonly fn: HookCallback
}

/**
 * The afterCommit and afterRollback callbacks of one unit of work, kept with the savepoints that
 * were open when they were registered (as Django's run_on_commit does). Entries are kept in one
 * list, in registration order; savepoints nest, so an open savepoint's frame is the tail of the
 * list from its mark on: rolling it back drops that tail's afterCommit callbacks and runs its
 * afterRollback ones. No I/O of its own: the unit of work runs the list when it ends.
 */
export class CommitHooks {
  readonly #owner: HookOwner
  readonly #telemetry: Telemetry
  #entries: Entry[] = []

  constructor (owner: HookOwner, telemetry: Telemetry) {
    this.#owner = owner
    this.#telemetry = telemetry
  }

  add (afterCommit: boolean, fn: HookCallback): void {
    this.#entries.push({ afterCommit, fn })
  }

  /** Where a savepoint's frame starts: the callbacks registered from now on are inside it. */
  get mark (): number {
    return this.#entries.length
  }

  /** The savepoint that started at `mark` was rolled back: its afterCommit callbacks are dropped, its afterRollback ones run now. */
  rolledBackTo (mark: number): Promise<void> {
    const frame = this.#entries.splice(mark)
    return this.#run(frame, false)
  }

  /** Runs what the unit of work's outcome calls for, once; never rejects. */
  ended ({ status }: Outcome, commit: boolean): Promise<void> {
    const entries = this.#entries
    this.#entries = []
    // Nobody knows whether the work stands: neither kind may run.
    if (status === 'outcome unknown') return Promise.resolve()
    const committed = status === 'committed' || (status === 'never opened' && commit)
    return this.#run(entries, committed)
  }

  /** Runs the callbacks of one kind in order, each awaited; one that fails is logged and counted, and the others still run. */
  async #run (entries: readonly Entry[], afterCommit: boolean): Promise<void> {
    for (const entry of entries) {
      if (entry.afterCommit !== afterCommit) continue
      try {
        await entry.fn()
      } catch (error) {
        const { log, route, requestId } = this.#owner
        this.#telemetry.callbackFailed()
        const kind = afterCommit ? 'afterCommit' : 'afterRollback'
        log.error({ err: error, reqId: requestId, route }, `fastify-db-session: an ${kind} callback failed; the others still ran`)
      }
    }
  }
}
