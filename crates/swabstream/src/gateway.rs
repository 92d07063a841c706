//! `swabstream gateway`: the HTTP ingest service for scanners and code
//! systems (swabstream-gateway), and `swabstream credential`, which makes a
//! device's token and the entry of the credentials file that admits it.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use swabstream_gateway::{Credentials, Gateway, LATENCY_BUCKETS};

use crate::config::Config;
use crate::connect;

pub fn run(rt: &tokio::runtime::Runtime, config: &Config) -> anyhow::Result<ExitCode> {
    let key = config.pseudonym_key()?.context(
        "the gateway pseudonymises ID numbers and needs a key: set pseudonym.key_file \
         or SWABSTREAM_PSEUDONYM__KEY (at least 16 bytes)",
    )?;
    let path = config.gateway.credentials.as_ref().context(
        "the gateway needs gateway.credentials, a file of device credentials \
         (make entries with `swabstream credential --device ID`)",
    )?;
    let credentials = Credentials::load(path)?;
    anyhow::ensure!(
        !credentials.is_empty(),
        "{} lists no [[device]]: nobody could publish",
        path.display()
    );
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("swabstream_gateway_request_seconds".to_owned()),
            LATENCY_BUCKETS,
        )?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    rt.block_on(async {
        let kafka = connect::connect(config).await?;
        let devices = credentials.len();
        let gateway = Gateway::new(
            &kafka.cluster,
            config.gateway_options(),
            credentials,
            key,
            Some(metrics),
        )?;
        let listener = Gateway::bind(config.gateway.listen).await?;
        let addr = listener.local_addr()?;
        // Scripts and tests read the address from the first line of standard output.
        println!("listening on {addr}");
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, devices, topic = %config.kafka.topic, "gateway serving POST /v1/events");
        let result = gateway.serve(listener, crate::shutdown_signal()).await;
        kafka.stop().await;
        let drained = result?;
        if drained.unacknowledged > 0 {
            crate::report(&format!(
                "gateway stopped; {} events were still unacknowledged by Kafka (their requests were answered 503)",
                drained.unacknowledged
            ));
        } else {
            crate::report("gateway stopped; every request in flight was answered");
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(Debug, clap::Args)]
pub struct CredentialArgs {
    /// The device's id (ASCII, no `.`), e.g. `scanner-xh-0042`.
    #[arg(long)]
    device: String,
    /// Event types it may publish (default: all), e.g. `SampleScanned`.
    #[arg(long, value_delimiter = ',')]
    event_types: Vec<String>,
    /// Sites whose scans it may publish (default: any).
    #[arg(long, value_delimiter = ',')]
    sites: Vec<String>,
}

/// Prints the credentials-file entry on standard output (append it to the
/// file) and the token, once, on standard error (give it to the device).
pub fn credential(args: CredentialArgs) -> anyhow::Result<ExitCode> {
    let secret: [u8; 32] = rand::random();
    let (token, hash) = swabstream_gateway::auth::new_token(&args.device, &secret);
    let list = |v: &[String]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    let mut entry = format!("[[device]]\nid = {:?}\nsecret_sha256 = \"{hash}\"\n", args.device);
    if !args.event_types.is_empty() {
        entry.push_str(&format!("event_types = [{}]\n", list(&args.event_types)));
    }
    if !args.sites.is_empty() {
        entry.push_str(&format!("sites = [{}]\n", list(&args.sites)));
    }
    // Check the entry as the gateway will read it.
    Credentials::parse(&entry)?;
    print!("{entry}");
    eprintln!("token for `{}` (shown once; the file keeps only its hash):\n{token}", args.device);
    Ok(ExitCode::SUCCESS)
}
