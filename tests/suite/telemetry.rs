//! OpenTelemetry traces across hosts: an HTTP request that enqueues a job,
//! consumed by another plugin in another `serve` process, is one trace,
//! received and decoded by an OTLP receiver the test starts.

use redloom_tests::{OtlpReceiver, ReceivedSpan, RedisServer, ServeProcess, plugin, until};

/// The client's `traceparent` → the producer's server span → its
/// invocation → its `queue.enqueue` call → (inside the message) the
/// consumer's span on the other host → its invocation: every link checked
/// by span and parent ids, with each host's `service.name`; the access
/// records carry the trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_http_through_a_queue_to_another_host() {
    redloom_tests::with_timeout(async {
        let redis = RedisServer::start().await;
        let receiver = OtlpReceiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let common = format!(
            "{}[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            redis.config_table()
        );
        let chat = plugin("chat").display().to_string();
        let producer_config = format!(
            "{common}[plugins.video-producer]\nwasm = {:?}\nshared-queues = [\"video:ingest\"]\n\
             [[routes]]\nmethod = \"POST\"\npath = \"/videos\"\nplugin = \"video-producer\"\n\
             [plugins.chat]\nwasm = {chat:?}\nshared-channels = [\"room:*\"]\n\
             [[routes]]\nmethod = \"POST\"\npath = \"/rooms/:room\"\nplugin = \"chat\"\n",
            plugin("video-producer").display().to_string()
        );
        let consumer_config = format!(
            "{common}[plugins.video-worker]\nwasm = {:?}\nshared-queues = [\"video:ingest\"]\n\
             [plugins.video-worker.consumers.\"video:ingest\"]\n\
             [plugins.chat]\nwasm = {chat:?}\nshared-channels = [\"room:*\"]\n\
             subscriptions = [\"room:*\"]\n",
            plugin("video-worker").display().to_string()
        );
        let traced = |service: &'static str| {
            let endpoint = receiver.endpoint.clone();
            move |c: &mut std::process::Command| {
                c.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
                    .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
                    .env("OTEL_SERVICE_NAME", service)
                    .env("OTEL_BSP_SCHEDULE_DELAY", "100");
            }
        };
        let producer =
            ServeProcess::start_with(&dir.path().join("p"), &producer_config, traced("producer"))
                .await;
        let consumer =
            ServeProcess::start_with(&dir.path().join("c"), &consumer_config, traced("consumer"))
                .await;

        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let client_span = "00f067aa0ba902b7";
        let r = reqwest::Client::new()
            .post(format!("http://{}/videos", producer.http))
            .header("traceparent", format!("00-{trace}-{client_span}-01"))
            .header("idempotency-key", "traced-1")
            .body("s3://videos/traced.mp4")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);

        let find = |spans: &[ReceivedSpan], service: &str, name: &str, parent: &str| {
            span_of(spans, trace, service, name, parent)
        };
        let (server, invocation, enqueue, message, consumed) =
            until("the whole trace at the receiver", || async {
                let spans = receiver.spans();
                let chain = (|| {
                    let server = find(&spans, "producer", "POST /videos", client_span)?;
                    let invocation =
                        find(&spans, "producer", "video-producer http", &server.span_id)?;
                    let enqueue = spans.iter().find(|s| {
                        s.parent_span_id == invocation.span_id
                            && s.attributes.get("function").map(String::as_str) == Some("enqueue")
                    })?;
                    let message =
                        find(&spans, "consumer", "video:ingest process", &enqueue.span_id)?;
                    let consumed =
                        find(&spans, "consumer", "video-worker queue", &message.span_id)?;
                    Some((server, invocation, enqueue.clone(), message, consumed))
                })();
                chain.ok_or_else(|| seen(&spans, trace))
            })
            .await;
        assert_eq!(invocation.attributes["plugin"], "video-producer");
        assert_eq!(invocation.attributes["outcome"], "ok");
        assert_eq!(enqueue.attributes["module"], "queue");
        assert_eq!(
            message.attributes["messaging.destination.name"],
            "video:ingest"
        );
        assert_eq!(consumed.attributes["handler"], "queue");
        assert_ne!(server.span_id, client_span);

        // Pub/sub: the message carries the trace too (in its envelope), and
        // the subscriber sees the plugin's payload only.
        let chat_trace = "0af7651916cd43dd8448eb211c80319c";
        let r = reqwest::Client::new()
            .post(format!("http://{}/rooms/lobby", producer.http))
            .header("traceparent", format!("00-{chat_trace}-{client_span}-01"))
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let in_chat = |spans: &[ReceivedSpan], service: &str, name: &str, parent: &str| {
            span_of(spans, chat_trace, service, name, parent)
        };
        until("the pub/sub trace at the receiver", || async {
            let spans = receiver.spans();
            let chain = (|| {
                let server = in_chat(&spans, "producer", "POST /rooms/lobby", client_span)?;
                let invocation = in_chat(&spans, "producer", "chat http", &server.span_id)?;
                let publish = spans.iter().find(|s| {
                    s.parent_span_id == invocation.span_id
                        && s.attributes.get("function").map(String::as_str) == Some("publish")
                })?;
                let message = in_chat(&spans, "consumer", "room:lobby process", &publish.span_id)?;
                in_chat(&spans, "consumer", "chat message", &message.span_id)
            })();
            chain.map(|_| ()).ok_or_else(|| seen(&spans, chat_trace))
        })
        .await;
        let mut c = redis.client().await;
        let last: Option<Vec<u8>> = redis::cmd("GET")
            .arg("rl:chat:kv:last:lobby")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(
            last.as_deref(),
            Some(&b"hello"[..]),
            "the envelope is the host's"
        );

        // The access records of both hosts name the trace.
        let logged = |p: &ServeProcess| p.log_text().contains(&format!("trace_id=\"{trace}\""));
        until("trace ids in the access records", || async {
            if logged(&producer) && logged(&consumer) {
                Ok(())
            } else {
                Err(format!("{}\n{}", producer.log_text(), consumer.log_text()))
            }
        })
        .await;
        producer.stop().await;
        consumer.stop().await;
    })
    .await;
}

/// The span of trace `trace` from `service` named `name` whose parent is
/// `parent`.
fn span_of(
    spans: &[ReceivedSpan],
    trace: &str,
    service: &str,
    name: &str,
    parent: &str,
) -> Option<ReceivedSpan> {
    spans
        .iter()
        .find(|s| {
            s.service == service
                && s.trace_id == trace
                && s.name == name
                && s.parent_span_id == parent
        })
        .cloned()
}

/// The spans of `trace` received so far, as `service:name(id<-parent)`.
fn seen(spans: &[ReceivedSpan], trace: &str) -> String {
    let seen: Vec<String> = spans
        .iter()
        .filter(|s| s.trace_id == trace)
        .map(|s| {
            format!(
                "{}:{}({}<-{})",
                s.service, s.name, s.span_id, s.parent_span_id
            )
        })
        .collect();
    format!("{seen:?}")
}
