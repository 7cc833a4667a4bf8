import Fastify from 'fastify'
import { metrics } from '@opentelemetry/api'
import { ConsoleMetricExporter, MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics'
import { collectDefaultMetrics, register } from 'prom-client'
import dbSession from 'fastify-db-session'

// OpenTelemetry first: the SDK's meter provider, registered as the global one (NodeSDK's start()
// does the same). Any exporter fits: OTLP, Prometheus, or the console, once a minute, as here.
const meterProvider = new MeterProvider({
  readers: [new PeriodicExportingMetricReader({ exporter: new ConsoleMetricExporter(), exportIntervalMillis: 60_000 })]
})
metrics.setGlobalMeterProvider(meterProvider)
// prom-client's own process metrics, in its global registry.
collectDefaultMetrics()

const app = Fastify()
await app.register(dbSession, {
  connectionString: process.env.DATABASE_URL ?? 'postgres://localhost/app',
  promClientRegistry: register,
  openTelemetry: { meterProvider: metrics.getMeterProvider() }
})
app.get('/now', async (request) => request.db.selectNoFrom((eb) => eb.fn('now').as('now')).executeTakeFirstOrThrow())
// One scrape: prom-client's metrics and the plugin's.
app.get('/metrics', { config: { db: false } }, async (_request, reply) => {
  return reply.type(register.contentType).send(await register.metrics())
})
app.addHook('onClose', () => meterProvider.shutdown())

const address = await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
console.log(`listening on ${address}`)
// close() also shuts the meter provider down, which exports the last figures.
process.once('SIGTERM', () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
