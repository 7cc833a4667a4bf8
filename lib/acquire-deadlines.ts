/** One caller waiting for a connection. */
export interface Waiter {
  readonly deadline: number
  /** Answers the caller with the timeout. */
  readonly expire: () => void
  /** Answered with a connection (or the pool's error): the deadline no longer applies. */
  done: boolean
  /** Answered with a timeout: a connection the pool hands over later goes straight back. */
  expired: boolean
}

/**
 * The acquire deadline, kept with one timer for all waiters. pg-pool's connectionTimeoutMillis
 * sets and clears a timer for every checkout, even with idle connections; here every waiter of a
 * pool has the same timeout, so deadlines come in the order the waits begin, and one timer at the
 * oldest open deadline is enough.
 */
export class AcquireDeadlines {
  readonly #millis: number
  /** In the order the waits began; answered waiters leave from the front. */
  readonly #waiters: Waiter[] = []
  #timer: NodeJS.Timeout | null = null

  constructor (millis: number) {
    this.#millis = millis
  }

  /** Starts the clock for a wait that began at `asked` (performance.now()); `expire` runs if it passes first. */
  wait (asked: number, expire: () => void): Waiter {
    const waiter: Waiter = { deadline: asked + this.#millis, expire, done: false, expired: false }
    this.#waiters.push(waiter)
    this.#timer ??= this.#arm(this.#millis)
    return waiter
  }

  /** The waiter got its answer in time. */
  answered (waiter: Waiter): void {
    waiter.done = true
    this.#dropAnswered()
  }

  #dropAnswered (): void {
    while (this.#waiters.length > 0 && this.#waiters[0].done) this.#waiters.shift()
  }

  #arm (millis: number): NodeJS.Timeout {
    // Like pg-pool's own timer, it does not keep the process alive.
    return setTimeout(() => { this.#fire() }, millis).unref()
  }

  #fire (): void {
    this.#timer = null
    const now = performance.now()
    for (this.#dropAnswered(); this.#waiters.length > 0 && this.#waiters[0].deadline <= now; this.#dropAnswered()) {
      const waiter = this.#waiters.shift() as Waiter
      waiter.expired = true
      waiter.expire()
    }
    if (this.#waiters.length > 0) this.#timer = this.#arm(this.#waiters[0].deadline - now)
  }
}
