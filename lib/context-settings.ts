import type { FastifyRequest } from 'fastify'
import type { DbContextValue } from '../index.js'
import { InvalidOptionError } from './errors.js'
import { contextStatement } from './sql.js'

// A custom setting is `namespace.name`; PostgreSQL accepts more, but this is what set_config
// users mean, and it keeps built-in settings (search_path, role) out of reach by mistake.
const SETTING_NAME = /^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$/

export function checkSettingNames (names: string[], where: string): void {
  for (const name of names) {
    if (!SETTING_NAME.test(name)) {
      throw new InvalidOptionError(`${where}'${name}' is not a valid setting name; use namespace.name, like 'app.tenant_id'`)
    }
  }
}

export type RequestContext = Record<string, (request: FastifyRequest) => DbContextValue>

/** Checks the option's names once, and returns what builds a request's statement. */
export function requestContextResolver (context: RequestContext | undefined): ((request: FastifyRequest) => string) | null {
  if (context === undefined) return null
  if (context === null || typeof context !== 'object') {
    throw new InvalidOptionError(`context must be an object of setting names to functions (request) => value; instead got '${String(context)}'`)
  }
  const names = Object.keys(context)
  if (names.length === 0) return null
  checkSettingNames(names, 'context: ')
  for (const name of names) {
    if (typeof context[name] !== 'function') {
      throw new InvalidOptionError(`context['${name}'] must be a function (request) => value; instead got '${String(context[name])}'`)
    }
  }
  return (request) => {
    const values: Record<string, DbContextValue> = {}
    for (const name of names) values[name] = context[name](request)
    return contextStatement(values)
  }
}
