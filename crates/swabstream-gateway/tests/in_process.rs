//! The gateway as a library, in one process with an embedded broker (in
//! memory: what is tested here is the gateway's interface, not durability;
//! the binary's tests run it against the durable broker): every route the
//! OpenAPI document lists is served, and an accepted batch is in the topic.

use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use swabstream_broker::EmbeddedBroker;
use swabstream_events::PseudonymKey;
use swabstream_events::avro::Codec;
use swabstream_gateway::client::{Connection, Method};
use swabstream_gateway::{Credentials, Gateway, OPENAPI, Options};
use swabstream_kafka::{Cluster, TopicSpec, ensure_topics};

#[test]
fn routes_of_the_openapi_document_are_served_and_a_batch_reaches_the_topic() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(EmbeddedBroker::start_in_memory(0)).unwrap();
    let cluster = Cluster::embedded(broker.bootstrap());
    let topic = "gw-in-process";
    rt.block_on(ensure_topics(
        &cluster,
        &[TopicSpec { name: topic.to_owned(), partitions: 2, replication_factor: 1 }],
    ))
    .unwrap();
    let (token, hash) = swabstream_gateway::auth::new_token("dev-1", &[1; 32]);
    let credentials =
        Credentials::parse(&format!("[[device]]\nid = \"dev-1\"\nsecret_sha256 = \"{hash}\"\n"))
            .unwrap();
    let key = PseudonymKey::new(b"in-process test key".to_vec()).unwrap();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
    let opts = Options { topic: topic.to_owned(), ..Options::default() };
    let gateway = Gateway::new(&cluster, opts, credentials, key, Some(metrics)).unwrap();
    let listener = rt.block_on(Gateway::bind(SocketAddr::from(([127, 0, 0, 1], 0)))).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(gateway.serve(listener, async move {
        let _ = stopped.await;
    }));

    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let paths = doc["paths"].as_object().unwrap();
    rt.block_on(async {
        let mut c = Connection::open(addr).await.unwrap();
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                let m = match method.as_str() {
                    "get" => Method::GET,
                    "post" => Method::POST,
                    other => panic!("{path}: unexpected method {other}"),
                };
                let r = c.request(m, path, None, bytes::Bytes::new()).await.unwrap();
                let expected = if method == "post" { 401 } else { 200 };
                assert_eq!(r.status, expected, "{method} {path}: {:?}", r.body);
            }
        }
        assert_eq!(c.get("/nowhere").await.unwrap().status, 404);
        let events: Vec<serde_json::Value> = (0..3)
            .map(|i| {
                serde_json::json!({
                    "type": "RelativeCodeAudited",
                    "event_id": format!("ip-{i}"),
                    "id_number": format!("31010420100101000{i}"),
                    "occurred_at": "2022-04-09T10:00:00+08:00",
                    "code_id": format!("RC-{i}"),
                    "approved": true
                })
            })
            .collect();
        let r = c.post_events(&token, serde_json::to_vec(&events).unwrap()).await.unwrap();
        assert_eq!(r.status, 202, "{:?}", r.json());
        assert_eq!(r.json()["accepted"], 3);
    });
    let _ = stop.send(());
    let drained = rt.block_on(serving).unwrap().unwrap();
    assert_eq!(drained.unacknowledged, 0);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "in-process-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut ids = Vec::new();
    let started = std::time::Instant::now();
    while ids.len() < 3 && started.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let e = Codec::shared().decode(m.payload().unwrap()).unwrap();
            ids.push(e.event_id.into_owned());
        }
    }
    ids.sort();
    assert_eq!(ids, ["ip-0", "ip-1", "ip-2"]);
    drop(consumer);
    rt.block_on(broker.stop());
}
