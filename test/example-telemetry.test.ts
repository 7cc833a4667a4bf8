// The example service with OTEL_EXPORTER_OTLP_ENDPOINT set exports its traces over OTLP/HTTP: a
// receiver of this test's own, on a free 127.0.0.1 port, gets the request's span from @fastify/otel
// and the plugin's unit-of-work span inside the same trace. Without the variable, nothing of
// OpenTelemetry's SDK is loaded.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import { testDatabase } from './helpers/database.js'
import { startScript } from './helpers/util.js'

const SERVER = 'examples/multi-tenant-auth/server.ts'
// Two starts of the example (migrations, a role, an embedded-free PostgreSQL of the run): longer than tap's default 30 s on a loaded machine.
t.setTimeout(120_000)

/** An OTLP span as OTLP/HTTP's JSON encoding writes it. */
interface OtlpSpan {
  traceId: string
  spanId: string
  parentSpanId?: string
  name: string
  kind: number
  attributes: Array<{ key: string, value: Record<string, unknown> }>
}

/** Collects the spans posted to /v1/traces as OTLP JSON, with their resource's service.name. */
async function otlpReceiver (t: Test) {
  const spans: Array<OtlpSpan & { service: unknown }> = []
  const paths: string[] = []
  const server = createServer((request, response) => {
    let body = ''
    request.setEncoding('utf8')
    request.on('data', (chunk: string) => { body += chunk })
    request.on('end', () => {
      paths.push(`${request.method} ${request.url} ${request.headers['content-type']}`)
      const { resourceSpans = [] } = JSON.parse(body)
      for (const { resource, scopeSpans = [] } of resourceSpans) {
        const service = resource.attributes.find((a: { key: string }) => a.key === 'service.name')?.value.stringValue
        for (const { spans: posted = [] } of scopeSpans) spans.push(...posted.map((span: OtlpSpan) => ({ ...span, service })))
      }
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spans, paths }
}

async function exampleEnv (t: Test): Promise<Record<string, string>> {
  const db = await testDatabase(t)
  const role = 'mt_app_' + db.name
  db.afterDrop((admin) => admin.query(`DROP ROLE IF EXISTS ${role}, ${role}_owner`))
  const outbox = await mkdtemp(join(tmpdir(), 'mt-telemetry-outbox-'))
  t.teardown(() => rm(outbox, { recursive: true, force: true }))
  return { DATABASE_URL: db.url, APP_DB_ROLE: role, MAIL_OUTBOX: outbox }
}

const attribute = (span: OtlpSpan, key: string): unknown => {
  const value = span.attributes.find((a) => a.key === key)?.value
  return value === undefined ? undefined : Object.values(value)[0]
}

t.test('OTEL_EXPORTER_OTLP_ENDPOINT set: a request\'s spans arrive, the unit of work\'s inside the request\'s trace', async (t) => {
  const receiver = await otlpReceiver(t)
  const { server, port } = await startScript(t, SERVER, { ...await exampleEnv(t), OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_SERVICE_NAME: 'mt-under-test' })
  // A login for an unknown account: read in a fastify.db.transaction, answered 401.
  const res = await fetch(`http://127.0.0.1:${port}/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ tenantId: '00000000-0000-4000-8000-000000000000', email: 'nobody@example.com', password: 'x' })
  })
  t.equal(res.status, 401)
  // SIGTERM: the example closes the app, then shuts the tracer provider down, which exports the batch.
  server.kill('SIGTERM')
  await once(server, 'exit')

  t.ok(receiver.paths.length > 0, 'the exporter posted')
  t.ok(receiver.paths.every((path) => path.startsWith('POST /v1/traces application/json')), receiver.paths.join(', '))
  const request = receiver.spans.find((span) => span.name.startsWith('request') || attribute(span, 'http.route') === '/login')
  const unit = receiver.spans.find((span) => span.name.startsWith('transaction'))
  t.ok(request, `@fastify/otel's span of the request (got ${receiver.spans.map((span) => span.name).join(', ')})`)
  t.ok(unit, 'the plugin\'s span of the unit of work')
  if (request === undefined || unit === undefined) return
  t.equal(unit.service, 'mt-under-test', 'the resource names the service')
  t.equal(unit.traceId, request.traceId, 'in the request\'s trace')
  // Its parent is a span of the request's: the handler's span of @fastify/otel.
  const parent = receiver.spans.find((span) => span.spanId === unit.parentSpanId)
  t.ok(parent, 'its parent was exported too')
  t.equal(parent?.traceId, request.traceId)
  t.equal(unit.kind, 3, 'SPAN_KIND_CLIENT')
  t.equal(attribute(unit, 'db.system.name'), 'postgresql')
  t.equal(attribute(unit, 'db.client.connection.pool.name'), 'app')
  t.equal(attribute(unit, 'fastify_db_session.route'), 'fastify.db.transaction')
  t.equal(attribute(unit, 'fastify_db_session.outcome'), 'committed')
})

t.test('without OTEL_EXPORTER_OTLP_ENDPOINT: the SDK, the exporter and @fastify/otel are never loaded', async (t) => {
  const hide = new URL('./fixtures/without-otel-api/hide.mjs', import.meta.url).pathname
  const env: Record<string, string | undefined> = { ...process.env, ...await exampleEnv(t), PORT: '0' }
  delete env.OTEL_EXPORTER_OTLP_ENDPOINT
  const child = spawn(process.execPath, ['--import', 'tsx', '--import', hide, SERVER], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk
    if (stdout.includes('listening on')) child.kill('SIGTERM')
  })
  const [code] = await once(child, 'exit')
  t.equal(code, 0, stderr)
  t.match(stdout, 'multi-tenant-auth listening on')
  // The plugin's own look for @opentelemetry/api (a global tracer provider) is all there is.
  t.same(stderr.trim().split('\n'), ['refused @opentelemetry/api'])
})
