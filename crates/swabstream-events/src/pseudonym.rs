//! Pseudonymisation at the edge: a raw national ID number becomes a
//! `person_ref`, HMAC-SHA256(secret key, ID number), and goes no further.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::PersonRef;

/// The secret key of the city's pseudonyms. Its `Debug` form never shows the key.
#[derive(Clone)]
pub struct PseudonymKey(Vec<u8>);

impl PseudonymKey {
    /// A key of at least 16 bytes; shorter keys are refused as guessable.
    pub fn new(key: Vec<u8>) -> Result<Self, &'static str> {
        if key.len() < 16 {
            return Err("the pseudonym key must be at least 16 bytes");
        }
        Ok(PseudonymKey(key))
    }

    /// The pseudonym of an ID number. The number is normalised first (surrounding
    /// spaces dropped, a lowercase check letter `x` raised), so that the same
    /// person always gets the same pseudonym however the number was typed.
    pub fn person_ref(&self, id_number: &str) -> Result<PersonRef, &'static str> {
        let id = id_number.trim();
        if id.is_empty() {
            return Err("must not be empty");
        }
        if id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("must be an ID number of at most 32 letters and digits");
        }
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        for b in id.bytes() {
            mac.update(&[b.to_ascii_uppercase()]);
        }
        Ok(PersonRef(mac.finalize().into_bytes().into()))
    }
}

impl fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PseudonymKey(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_hmac_sha256_of_the_normalised_number() {
        let key = PseudonymKey::new(b"0123456789abcdef".to_vec()).unwrap();
        let a = key.person_ref("31010419800101123x").unwrap();
        let b = key.person_ref(" 31010419800101123X ").unwrap();
        assert_eq!(a, b);
        // Reference value from Python: hmac.new(b"0123456789abcdef", b"31010419800101123X", "sha256").hexdigest()
        assert_eq!(a.to_hex(), REFERENCE);
        let other = PseudonymKey::new(b"another key, 16+".to_vec()).unwrap();
        assert_ne!(other.person_ref("31010419800101123X").unwrap(), a);
        assert!(format!("{key:?}").contains("<secret>"));
        assert!(PseudonymKey::new(b"short".to_vec()).is_err());
        assert!(key.person_ref("").is_err());
        assert!(key.person_ref("12 34").is_err());
    }

    const REFERENCE: &str = "28a6e32a38920f75de321fd71bd5e5210847d2c018a8f129c179102653f7cb5c";
}
