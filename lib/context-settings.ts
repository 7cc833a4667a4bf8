import type { FastifyRequest } from 'fastify'
import type { DbContextValue } from '../index.js'
import { applicationNameText } from './application-name.js'
import type { ApplicationNameFor } from './application-name.js'
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

/**
 * Checks the context option's names once, and returns what builds a request's statement of
 * set_config calls: its context, and its application_name when `applicationName` names it.
 * null when there is nothing to set.
 */
export function requestContextResolver (context: RequestContext | undefined, applicationName: ApplicationNameFor | null = null): ((request: FastifyRequest) => string) | null {
  const names = contextNames(context)
  if (names.length === 0 && applicationName === null) return null
  const values: RequestContext = { ...context }
  if (applicationName !== null) values.application_name = (request) => applicationNameText(applicationName(request))
  const settings = Object.keys(values)
  return (request) => {
    const row: Record<string, DbContextValue> = {}
    for (const name of settings) row[name] = values[name](request)
    return contextStatement(row)
  }
}

function contextNames (context: RequestContext | undefined): string[] {
  if (context === undefined) return []
  if (context === null || typeof context !== 'object') {
    throw new InvalidOptionError(`context must be an object of setting names to functions (request) => value; instead got '${String(context)}'`)
  }
  const names = Object.keys(context)
  checkSettingNames(names, 'context: ')
  for (const name of names) {
    if (typeof context[name] !== 'function') {
      throw new InvalidOptionError(`context['${name}'] must be a function (request) => value; instead got '${String(context[name])}'`)
    }
  }
  return names
}
