import type { FastifyBaseLogger } from 'fastify'

/** For promises whose failure is already handled elsewhere, or does not matter. */
export function ignore (): void {}

/** A rejection handler that logs `message` as a warning with the error. */
export function logWarning (log: FastifyBaseLogger, message: string): (error: unknown) => void {
  return (error) => { log.warn({ err: error }, message) }
}
