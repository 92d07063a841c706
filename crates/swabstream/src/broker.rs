//! `swabstream broker`: the embedded Kafka-API broker alone, for local
//! development and for tests that stop and restart it. Other swabstream
//! processes on the same data directory use it; other Kafka clients reach it
//! at the address printed on standard output.

use std::process::ExitCode;

use crate::config::Config;
use crate::connect;

pub fn run(rt: &tokio::runtime::Runtime, config: &Config) -> anyhow::Result<ExitCode> {
    rt.block_on(async {
        let kafka = connect::embedded(config, true).await?;
        println!("listening on {}", kafka.cluster.bootstrap);
        eprintln!(
            "embedded broker of {} listening on {}; stop it with Ctrl-C",
            config.data_dir.display(),
            kafka.cluster.bootstrap
        );
        crate::shutdown_signal().await;
        kafka.stop().await;
        Ok(ExitCode::SUCCESS)
    })
}
