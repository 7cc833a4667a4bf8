// The error an app's registration failed with: what the option checks are tested by.
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import dbSession from '../../lib/index.js'

export interface RegistrationError { code?: string, message: string }

/** Builds an app with `build` and returns the error its registration failed with. */
export async function buildError (build: (app: FastifyInstance) => unknown): Promise<RegistrationError> {
  const app = Fastify()
  try {
    await build(app)
    await app.ready()
  } catch (error) {
    return error as RegistrationError
  } finally {
    await app.close()
  }
  throw new Error('registration unexpectedly succeeded')
}

/** Registers the plugin with `options` and returns the error registration failed with. */
export function registrationError (options: unknown): Promise<RegistrationError> {
  return buildError((app) => app.register(dbSession, options as never))
}
