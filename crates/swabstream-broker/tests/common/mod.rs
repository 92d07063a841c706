//! What the broker's tests share: an embedded broker on one engine (or in
//! memory) in a directory of its own, with a one-partition topic `t`.

use std::path::PathBuf;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use swabstream_broker::{EmbeddedBroker, LogEngine};

pub struct TestBroker {
    rt: tokio::runtime::Runtime,
    broker: EmbeddedBroker,
    dir: PathBuf,
}

impl TestBroker {
    /// A broker on `engine` (None: in memory), with the topic `t` of one
    /// partition made; `name` keeps the test's directory apart.
    pub fn start(name: &str, engine: Option<LogEngine>) -> TestBroker {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = std::env::temp_dir()
            .join(format!("swabstream-broker-{name}-{}-{engine:?}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let broker = rt.block_on(async {
            let broker = match engine {
                Some(e) => EmbeddedBroker::open(&dir, e, 0).await.unwrap(),
                None => EmbeddedBroker::start_in_memory(0).await.unwrap(),
            };
            let admin: AdminClient<_> =
                ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().unwrap();
            let topic = NewTopic::new("t", 1, TopicReplication::Fixed(1));
            admin.create_topics([&topic], &AdminOptions::new()).await.unwrap();
            broker
        });
        TestBroker { rt, broker, dir }
    }

    pub fn bootstrap(&self) -> String {
        self.broker.bootstrap()
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn stop(self) {
        self.rt.block_on(self.broker.stop());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
