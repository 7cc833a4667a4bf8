import type { FastifyRequest } from 'fastify'
import { InvalidOptionError } from './errors.js'

export type ApplicationNameFor = (request: FastifyRequest) => string

// PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name, and shows only printable ASCII.
const LIMIT = 63
const NOT_PRINTABLE_ASCII = /[^\x20-\x7e]/g

/** What pg_stat_activity shows for a unit of work: printable ASCII, cut to the 63 bytes PostgreSQL keeps. */
export function applicationNameText (name: string): string {
  return name.replace(NOT_PRINTABLE_ASCII, '?').slice(0, LIMIT)
}

/**
 * The default: the route and the request id, like `GET /notes/:id req-1f`. The route's pattern,
 * never the URL, which may carry a token in its query; the not-found handler has none.
 */
function routeAndRequestId (request: FastifyRequest): string {
  return `${request.method} ${request.routeOptions.url ?? '(no route)'} ${request.id}`
}

/**
 * Checks the `applicationName` option once: by default (or true) the route and the request id, a
 * function (request) => string, or false for none.
 */
export function applicationNameResolver (option: unknown): ApplicationNameFor | null {
  if (option === false) return null
  if (option === true || option === undefined) return routeAndRequestId
  if (typeof option !== 'function') {
    throw new InvalidOptionError(`applicationName must be a function (request) => string, true (the default: the route and the request id), or false to leave application_name alone; instead got '${String(option)}'`)
  }
  return (request) => {
    const name = option(request)
    if (typeof name !== 'string') {
      throw new InvalidOptionError(`applicationName must return a string; it returned '${String(name)}'`)
    }
    return name
  }
}
