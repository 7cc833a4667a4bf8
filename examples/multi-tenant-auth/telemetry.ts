// OpenTelemetry traces, only when OTEL_EXPORTER_OTLP_ENDPOINT is set (e.g. http://localhost:4318,
// an OpenTelemetry Collector's OTLP/HTTP port): the SDK's tracer provider, registered as the
// global one, exporting in batches; @fastify/otel gives each request its span; the plugin finds
// the global provider by itself and puts each unit of work's span under the request's. Without
// the variable nothing of OpenTelemetry is loaded: the imports below are dynamic.

/** Starts tracing if asked to; returns what flushes and stops it (at shutdown), or null. */
export async function startTelemetry (env: NodeJS.ProcessEnv = process.env): Promise<(() => Promise<void>) | null> {
  if (!env.OTEL_EXPORTER_OTLP_ENDPOINT) return null
  const [{ BatchSpanProcessor, NodeTracerProvider }, { OTLPTraceExporter }, { resourceFromAttributes }, { FastifyOtelInstrumentation }] = await Promise.all([
    import('@opentelemetry/sdk-trace-node'),
    // OTLP over HTTP, JSON; it reads OTEL_EXPORTER_OTLP_ENDPOINT (and _HEADERS) itself, and posts to its /v1/traces.
    import('@opentelemetry/exporter-trace-otlp-http'),
    import('@opentelemetry/resources'),
    import('@fastify/otel')
  ])
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME ?? 'multi-tenant-auth' }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())]
  })
  // The global tracer provider, AsyncLocalStorage as the context manager, W3C trace context.
  provider.register()
  // Registers itself on every Fastify instance made from now on (Fastify's initialization channel).
  const fastifyOtel = new FastifyOtelInstrumentation({ registerOnInitialization: true })
  fastifyOtel.setTracerProvider(provider)
  return async () => {
    fastifyOtel.disable()
    await provider.shutdown()
  }
}
