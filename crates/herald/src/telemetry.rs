//! What `herald serve` tells about itself as it runs: logs on stderr
//! (`HERALD_LOG`, `--log-json`) and, with `--otlp-endpoint URL`,
//! OpenTelemetry traces sent over OTLP/HTTP.
//!
//! The spans are made with `tracing` alone where the work happens
//! (`herald-core`: `publish`, `validate`, `store`, `fanout`;
//! `herald-http`: the connections' `sse`, `ws`, `poll`), at debug level,
//! so that logs at `info` neither show nor pay for them. With an endpoint,
//! a `tracing-opentelemetry` layer takes them (whatever `HERALD_LOG` says)
//! and the OpenTelemetry SDK batches them on the tokio runtime and posts
//! them as protobuf to `URL/v1/traces` with hyper-util's client (the one
//! the hooks and key-set fetches use, over rustls for `https://`). The W3C
//! `traceparent` a publisher sends reaches the spans through
//! [`herald_core::event::TraceBridge`], which this module implements
//! with `OpenTelemetrySpanExt` (the only place that knows OpenTelemetry).
//!
//! Without the cargo feature `otlp` (`--no-default-features`) none of
//! OpenTelemetry is built, and `--otlp-endpoint` is refused at start.

use tracing_subscriber::EnvFilter;

/// The logging set up by [`init`]; [`Telemetry::shutdown`] flushes the
/// spans not sent yet (a graceful stop).
#[derive(Default)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// Installs the process's `tracing` subscriber: logs on stderr filtered
/// by `HERALD_LOG` (default `info`), as JSON lines with `log_json`, and,
/// with `otlp_endpoint`, the OpenTelemetry layer exporting to it. Call it
/// once, inside the tokio runtime (the span batches are sent from a task
/// of it).
///
/// Errors: `otlp_endpoint` is not an `http://` or `https://` URL with a
/// host and no credentials, the exporter cannot be built, or this binary
/// was built without the `otlp` feature.
pub fn init(log_json: bool, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let Some(endpoint) = otlp_endpoint else {
        if log_json {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .json()
                .with_writer(std::io::stderr)
                .init();
        } else {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
        }
        return Ok(Telemetry::default());
    };
    #[cfg(feature = "otlp")]
    {
        otlp::init(log_json, filter, endpoint)
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = (filter, endpoint);
        anyhow::bail!(
            "--otlp-endpoint: this herald was built without OpenTelemetry traces \
             (the cargo feature `otlp`, on by default)"
        )
    }
}

impl Telemetry {
    /// Sends the spans still waiting, then stops the exporter; within 15 s
    /// (a collector that does not answer does not hold the stop longer).
    /// Nothing to do without traces.
    pub async fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider {
            otlp::shutdown(provider).await;
        }
    }
}

#[cfg(feature = "otlp")]
pub(crate) mod otlp {
    //! The OpenTelemetry half of [`super`], built with the `otlp` feature.

    use std::time::Duration;

    use anyhow::Context as _;
    use herald_core::event::{TraceBridge, TraceParent};
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
    };
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::trace::{span_processor_with_async_runtime, SdkTracerProvider};
    use tracing::level_filters::LevelFilter;
    use tracing::{Level, Metadata};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    use super::Telemetry;

    /// One export (one batch posted) may take this long, connection
    /// included.
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The TCP connect to the collector may take this long.
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// How long a stop waits for the last spans to be sent.
    pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

    /// `URL/v1/traces`, the OTLP/HTTP traces path under `endpoint`.
    ///
    /// Errors: not an `http://` or `https://` URL with a host, or one that
    /// holds credentials (they would be logged).
    pub(crate) fn traces_url(endpoint: &str) -> anyhow::Result<String> {
        let uri: http::Uri = endpoint
            .parse()
            .with_context(|| format!("--otlp-endpoint {endpoint:?} is not a URL"))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            anyhow::bail!("--otlp-endpoint: the URL holds credentials (user:password@)");
        }
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            anyhow::bail!(
                "--otlp-endpoint {endpoint:?}: use an http:// or https:// URL with a host"
            );
        }
        if uri.query().is_some() {
            anyhow::bail!("--otlp-endpoint {endpoint:?}: give the base URL, without a query");
        }
        Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
    }

    /// Which `tracing` data the OpenTelemetry layer takes: Herald's spans
    /// down to debug level (they are made at debug so that logs do not pay
    /// for them) and Herald's events down to info (they become events of
    /// the span they happen in). Never the exporter's own logs or
    /// hyper's, so that exporting makes no spans of its own.
    fn exported(meta: &Metadata<'_>) -> bool {
        let max = if meta.is_span() {
            Level::DEBUG
        } else {
            Level::INFO
        };
        meta.target().starts_with("herald") && *meta.level() <= max
    }

    pub(super) fn init(
        log_json: bool,
        filter: EnvFilter,
        endpoint: &str,
    ) -> anyhow::Result<Telemetry> {
        let url = traces_url(endpoint)?;
        let connector =
            herald_hooks::client::connector(CONNECT_TIMEOUT).map_err(anyhow::Error::msg)?;
        let client = opentelemetry_http::hyper::HyperClient::new(connector, EXPORT_TIMEOUT, None);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .context("--otlp-endpoint: cannot build the OTLP exporter")?;
        let processor = span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("herald")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let otel = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("herald"))
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_filter(
                tracing_subscriber::filter::filter_fn(exported)
                    .with_max_level_hint(LevelFilter::DEBUG),
            );
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let logs = if log_json {
            logs.json().boxed()
        } else {
            logs.boxed()
        };
        tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .with(otel)
            .init();
        herald_core::event::install_trace_bridge(Box::new(OtelBridge));
        tracing::info!(endpoint, "exporting traces over OTLP/HTTP");
        Ok(Telemetry {
            provider: Some(provider),
        })
    }

    pub(super) async fn shutdown(provider: SdkTracerProvider) {
        // The batch processor's shutdown blocks its caller until its task
        // (on this runtime) has sent the last batch: off the async threads.
        let stop = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, stop).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "traces: the last spans were not sent"),
            Ok(Err(e)) => tracing::warn!(error = %e, "traces: the exporter's shutdown failed"),
            Err(_) => tracing::warn!(
                "traces: the last spans were not sent within {SHUTDOWN_TIMEOUT:?} of the stop"
            ),
        }
    }

    /// [`TraceBridge`] with `tracing-opentelemetry`: a [`TraceParent`] is
    /// an OpenTelemetry span context.
    struct OtelBridge;

    fn span_context(t: TraceParent, remote: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(t.trace_id),
            SpanId::from_bytes(t.parent_id),
            TraceFlags::new(t.flags),
            remote,
            TraceState::default(),
        )
    }

    impl TraceBridge for OtelBridge {
        fn set_parent(&self, span: &tracing::Span, parent: TraceParent) {
            let cx =
                opentelemetry::Context::new().with_remote_span_context(span_context(parent, true));
            // Refused only for a span already started or not recorded:
            // it then keeps the parent it has.
            let _ = span.set_parent(cx);
        }

        fn context(&self, span: &tracing::Span) -> Option<TraceParent> {
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            sc.is_valid().then(|| TraceParent {
                trace_id: sc.trace_id().to_bytes(),
                parent_id: sc.span_id().to_bytes(),
                flags: sc.trace_flags().to_u8(),
            })
        }

        fn add_link(&self, span: &tracing::Span, to: TraceParent) {
            span.add_link(span_context(to, false));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::traces_url;

        #[test]
        fn the_traces_path_goes_under_the_endpoint() {
            assert_eq!(
                traces_url("http://127.0.0.1:4318").unwrap(),
                "http://127.0.0.1:4318/v1/traces"
            );
            assert_eq!(
                traces_url("https://otel.example/base/").unwrap(),
                "https://otel.example/base/v1/traces"
            );
            for bad in [
                "127.0.0.1:4318",
                "ftp://x",
                "http://user:pw@x",
                "http://x?a=b",
                "",
            ] {
                assert!(traces_url(bad).is_err(), "{bad}");
            }
        }
    }
}
