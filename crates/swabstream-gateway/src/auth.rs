//! Who may publish what: per-device bearer tokens from a credentials file.
//!
//! A token is `<device id>.<secret>`. The file keeps only the SHA-256 of each
//! secret, so a copy of it lets nobody publish. The device id selects the
//! entry (it is not secret); the secret's hash is then compared with
//! `subtle`'s constant-time equality, so response times say nothing about how
//! much of a guess was right. An unknown device is compared against a dummy
//! hash, so it takes as long as a known one with a wrong secret.
//!
//! Bearer tokens over TLS were chosen over request signing: scanners and
//! code systems already speak HTTPS through the city's load balancers, and a
//! token needs no clock agreement on devices whose clocks SPEC §3 says may be
//! wrong by days.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use swabstream_events::model::{Body, Event};

/// The credentials file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    device: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    /// Lowercase hex SHA-256 of the secret part of the token.
    secret_sha256: String,
    /// Event types it may publish; absent: all.
    event_types: Option<Vec<String>>,
    /// Sites whose `SampleScanned` events it may publish; absent: any.
    sites: Option<Vec<String>>,
}

/// One device's credential and scope.
#[derive(Debug)]
pub struct Device {
    pub id: String,
    secret_sha256: [u8; 32],
    event_types: Option<BTreeSet<String>>,
    sites: Option<BTreeSet<String>>,
}

/// Every device the gateway knows.
#[derive(Debug, Default)]
pub struct Credentials {
    devices: HashMap<String, std::sync::Arc<Device>>,
}

/// Why a request is not authenticated. The response says only "invalid
/// credential" for the last two, to not confirm which device ids exist.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing `Authorization: Bearer <device>.<secret>` header")]
    Missing,
    #[error("the Authorization header is not `Bearer <device>.<secret>`")]
    Malformed,
    #[error("invalid credential")]
    UnknownDevice,
    #[error("invalid credential")]
    WrongSecret,
}

const EVENT_TYPES: [&str; 3] = ["CodeIssued", "RelativeCodeAudited", "SampleScanned"];

impl Credentials {
    /// Reads a credentials file (TOML, `[[device]]` entries).
    pub fn load(path: &Path) -> anyhow::Result<Credentials> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the credentials file {}", path.display()))?;
        Credentials::parse(&text)
            .with_context(|| format!("in the credentials file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Credentials> {
        let file: File = toml::from_str(text)?;
        let mut devices = HashMap::new();
        for (i, e) in file.device.into_iter().enumerate() {
            let at = || format!("device #{} (`{}`)", i + 1, e.id);
            anyhow::ensure!(
                !e.id.is_empty() && !e.id.contains('.') && e.id.is_ascii(),
                "{}: id must be non-empty ASCII without `.`",
                at()
            );
            let mut secret_sha256 = [0u8; 32];
            hex::decode_to_slice(&e.secret_sha256, &mut secret_sha256)
                .map_err(|_| anyhow::anyhow!("{}: secret_sha256 must be 64 hex digits", at()))?;
            if let Some(types) = &e.event_types
                && let Some(bad) = types.iter().find(|t| !EVENT_TYPES.contains(&t.as_str()))
            {
                anyhow::bail!(
                    "{}: unknown event type `{bad}` (expected {})",
                    at(),
                    EVENT_TYPES.join(", ")
                );
            }
            let device = Device {
                id: e.id.clone(),
                secret_sha256,
                event_types: e.event_types.map(|v| v.into_iter().collect()),
                sites: e.sites.map(|v| v.into_iter().collect()),
            };
            anyhow::ensure!(
                devices.insert(e.id.clone(), std::sync::Arc::new(device)).is_none(),
                "device `{}` is listed twice",
                e.id
            );
        }
        Ok(Credentials { devices })
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The device an `Authorization` header value belongs to.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<std::sync::Arc<Device>, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::Malformed)?
            .trim();
        let (id, secret) = token.split_once('.').ok_or(AuthError::Malformed)?;
        if secret.is_empty() {
            return Err(AuthError::Malformed);
        }
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        match self.devices.get(id) {
            Some(d) if bool::from(presented.ct_eq(&d.secret_sha256)) => Ok(d.clone()),
            Some(_) => Err(AuthError::WrongSecret),
            None => {
                // Same work as for a known device, so timing does not tell them apart.
                let _ = std::hint::black_box(presented.ct_eq(&[0u8; 32]));
                Err(AuthError::UnknownDevice)
            }
        }
    }
}

impl Device {
    /// Why this device may not publish `event`, if it may not.
    pub fn forbids(&self, event: &Event<'_>) -> Option<String> {
        let type_name = event.body.type_name();
        if let Some(types) = &self.event_types
            && !types.contains(type_name)
        {
            return Some(format!(
                "credential `{}` may not publish {type_name} events (allowed: {})",
                self.id,
                types.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let (Some(sites), Body::SampleScanned(s)) = (&self.sites, &event.body)
            && !sites.contains(s.site_id.as_ref())
        {
            return Some(format!(
                "credential `{}` may not publish scans of site `{}`",
                self.id, s.site_id
            ));
        }
        None
    }
}

/// A new token for `device` and the hash the credentials file keeps of it.
pub fn new_token(device: &str, secret: &[u8; 32]) -> (String, String) {
    let secret = hex::encode(secret);
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    (format!("{device}.{secret}"), hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> (Credentials, String, String) {
        let (full, full_hash) = new_token("codes-1", &[7; 32]);
        let (scanner, scanner_hash) = new_token("scanner-1", &[9; 32]);
        let text = format!(
            r#"
            [[device]]
            id = "codes-1"
            secret_sha256 = "{full_hash}"
            [[device]]
            id = "scanner-1"
            secret_sha256 = "{scanner_hash}"
            event_types = ["SampleScanned"]
            sites = ["XH-001"]
            "#
        );
        (Credentials::parse(&text).unwrap(), full, scanner)
    }

    #[test]
    fn tokens_authenticate_their_device_only() {
        let (c, full, scanner) = creds();
        let auth = |h: &str| c.authenticate(Some(h.as_bytes())).map(|d| d.id.clone());
        assert_eq!(auth(&format!("Bearer {full}")).unwrap(), "codes-1");
        assert_eq!(auth(&format!("Bearer {scanner}")).unwrap(), "scanner-1");
        let (wrong, _) = new_token("scanner-1", &[8; 32]);
        assert_eq!(auth(&format!("Bearer {wrong}")), Err(AuthError::WrongSecret));
        let (other, _) = new_token("nobody", &[9; 32]);
        assert_eq!(auth(&format!("Bearer {other}")), Err(AuthError::UnknownDevice));
        assert_eq!(auth(&full), Err(AuthError::Malformed), "no Bearer scheme");
        assert_eq!(auth("Bearer codes-1."), Err(AuthError::Malformed));
        assert_eq!(auth("Bearer nodot"), Err(AuthError::Malformed));
        assert_eq!(c.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(c.authenticate(Some(b"Bearer \xff.x")).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn bad_files_are_refused_naming_the_entry() {
        let e = |t: &str| format!("{:#}", Credentials::parse(t).unwrap_err());
        let h = "0".repeat(64);
        assert!(e("[[device]]\nid = \"a\"\nsecret_sha256 = \"xyz\"\n").contains("64 hex"));
        let dup = format!(
            "[[device]]\nid = \"a\"\nsecret_sha256 = \"{h}\"\n[[device]]\nid = \"a\"\nsecret_sha256 = \"{h}\"\n"
        );
        assert!(e(&dup).contains("listed twice"));
        let t =
            format!("[[device]]\nid = \"a\"\nsecret_sha256 = \"{h}\"\nevent_types = [\"Scan\"]\n");
        assert!(e(&t).contains("unknown event type `Scan`"), "{}", e(&t));
        assert!(e("[[device]]\nid = \"a.b\"\nsecret_sha256 = \"\"\n").contains("without `.`"));
        assert!(e("[[devices]]\n").contains("devices"));
    }
}
