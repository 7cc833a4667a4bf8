// What a client is told when a request fails: validation messages it can act on, the coded answers
// of Fastify and fastify-db-session, and for anything unexpected a code and a generic message
// (the detail, PostgreSQL's text included, goes to the log under the request id).
import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyReply, FastifyRequest, FastifySchemaValidationError } from 'fastify'

/** One message per field: Ajv may report a field several times (a union's every branch). */
export function formatSchemaErrors (errors: FastifySchemaValidationError[], dataVar: string): Error {
  const byField = new Map<string, string>()
  for (const error of errors) {
    const path = dataVar + error.instancePath
    if (!byField.has(path)) byField.set(path, `${path} ${describe(error)}`)
  }
  return new Error([...byField.values()].join(', '))
}

function describe (error: FastifySchemaValidationError): string {
  const params = error.params as { additionalProperty?: string, allowedValues?: unknown[], format?: string }
  // Ajv's message leaves out the name of the property it refuses, and the values it allows.
  if (params.additionalProperty !== undefined) return `must NOT have additional property '${params.additionalProperty}'`
  if (error.keyword === 'enum' && params.allowedValues !== undefined) return `must be one of ${params.allowedValues.map((value) => `'${String(value)}'`).join(', ')}`
  if (error.keyword === 'format' && params.format === 'lowercase-uuid') return 'must be a UUID in lower case, as the service issues them'
  return error.message ?? 'is invalid'
}

/** The service's error handler. */
export function answerError (error: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const status = error.statusCode ?? 500
  if ((status === 409 || status === 503) && error.code !== undefined) {
    // fastify-db-session's conflicts (retry the request) and unavailability (retry later), and
    // Fastify's own 503s, keep their code; their messages can carry PostgreSQL's text, so a
    // generic one replaces them.
    request.log.warn({ err: error }, 'request failed')
    const message = status === 409 ? 'the request conflicted with a concurrent one and changed nothing; retry it' : 'the service is busy or its database unavailable; retry later'
    return reply.code(status).send({ statusCode: status, code: error.code, error: STATUS_CODES[status], message, requestId: request.id })
  }
  if (status >= 400 && status < 500) {
    // Bad input, a body too large, a rate limit: the message is about the request, and says how to fix it.
    if (status !== 429) request.log.info({ err: error }, 'request refused')
    return reply.code(status).send({ statusCode: status, code: error.code, error: STATUS_CODES[status], message: error.message })
  }
  request.log.error({ err: error }, 'request failed')
  return reply.code(500).send({
    statusCode: 500,
    code: 'INTERNAL_ERROR',
    error: STATUS_CODES[500],
    message: 'something went wrong; the server log has the details',
    requestId: request.id
  })
}
