//! The event model of SPEC §2: three event types sharing an envelope, and the
//! vocabulary (districts, reasons, scan methods) the rules and views speak.
//!
//! Strings are `Cow<'a, str>` so that the wire decoder can lend slices of the
//! record it decodes (the hot path allocates nothing), while JSON parsing and
//! the simulator hand out owned events (`Event<'static>`).

use std::borrow::Cow;
use std::fmt;

use crate::time::Timestamp;

/// The most characters an identifier (`event_id`, `code_id`, `site_id`, ...) may have.
pub const MAX_ID_CHARS: usize = 64;

/// A person's pseudonym: HMAC-SHA256(secret key, national ID number).
///
/// Kept as the 32 raw bytes; its text form is 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersonRef(pub [u8; 32]);

impl PersonRef {
    /// Parses the text form: exactly 64 lowercase hex characters.
    pub fn parse_hex(s: &str) -> Result<Self, &'static str> {
        if s.len() != 64 {
            return Err("must be 64 lowercase hex characters");
        }
        if !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err("must be 64 lowercase hex characters");
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| "must be 64 lowercase hex characters")?;
        Ok(PersonRef(out))
    }

    /// The text form, 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for PersonRef {
    // A pseudonym is still a per-person handle: debug output shows a short prefix only,
    // enough to tell two apart in a test failure, never enough to be a stable join key in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonRef({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// One event: the common envelope of SPEC §2.1 and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// Unique per event; a producer's retry reuses it.
    pub event_id: Cow<'a, str>,
    /// Whose event it is; also the Kafka key.
    pub person_ref: PersonRef,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// What happened.
    pub body: Body<'a>,
}

/// What happened: one of the three event types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// The code system issued a code to a person.
    CodeIssued(CodeIssued<'a>),
    /// A manual audit of a `MANUAL_PENDING` relative code ended.
    RelativeCodeAudited(RelativeCodeAudited<'a>),
    /// A scanner registered the person into a sample tube.
    SampleScanned(SampleScanned<'a>),
}

impl Body<'_> {
    /// The `type` name of SPEC §2.1.
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::CodeIssued(_) => "CodeIssued",
            Body::RelativeCodeAudited(_) => "RelativeCodeAudited",
            Body::SampleScanned(_) => "SampleScanned",
        }
    }
}

/// `CodeIssued`: the code system issued a code to a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeIssued<'a> {
    pub code_id: Cow<'a, str>,
    pub kind: CodeKind,
    pub channel: Channel,
    /// Required for `PAPER` codes.
    pub expires_at: Option<Timestamp>,
    /// `RELATIVE` codes only.
    pub verification: Option<Verification>,
}

/// `RelativeCodeAudited`: a manual audit of a relative code ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelativeCodeAudited<'a> {
    pub code_id: Cow<'a, str>,
    pub approved: bool,
}

/// `SampleScanned`: a scanner at a sampling site registered the person into a tube.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleScanned<'a> {
    pub site_id: Cow<'a, str>,
    /// A district code as sent; whether it is one of the 16 is a validation rule
    /// (`DISTRICT_UNKNOWN`), not a decoding one.
    pub district: Cow<'a, str>,
    pub tube_id: Cow<'a, str>,
    pub scanner_id: Cow<'a, str>,
    pub identification: Identification<'a>,
}

/// How the person was identified at the site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identification<'a> {
    /// A code was scanned; `generated_at` is when a live code was rendered on screen.
    Code { code_id: Cow<'a, str>, generated_at: Option<Timestamp> },
    /// Registered by hand from an ID document.
    IdDocument,
    /// Registered by hand from an ID number declared on the spot.
    DeclaredId,
}

impl Identification<'_> {
    /// The `method` name of SPEC §2.1.
    pub fn method_name(&self) -> &'static str {
        match self {
            Identification::Code { .. } => "CODE",
            Identification::IdDocument => "ID_DOCUMENT",
            Identification::DeclaredId => "DECLARED_ID",
        }
    }
}

macro_rules! symbols {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every symbol, in schema order (the Avro enum index is the position here).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The symbol as written in JSON, Avro and the views.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the symbol as written in JSON, Avro and the views.
            #[allow(clippy::should_implement_trait)]
            pub fn from_str(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }

            /// The position in [`Self::ALL`], also the Avro enum index.
            pub fn index(self) -> usize {
                self as usize
            }

            /// The symbol at a position of [`Self::ALL`].
            pub fn from_index(i: usize) -> Option<Self> {
                Self::ALL.get(i).copied()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

symbols! {
    /// The kind of a code (SPEC §2.1).
    CodeKind {
        /// The personal nucleic acid code: a static QR code; a screenshot is fine.
        Personal = "PERSONAL",
        /// The offline paper code; it expires.
        Paper = "PAPER",
        /// The real-time dynamic application code; it must be live when scanned.
        Dynamic = "DYNAMIC",
        /// A code held by a family member; live, and its relationship must be verified.
        Relative = "RELATIVE",
    }
}

symbols! {
    /// Where a code was issued.
    Channel { App = "APP", Wechat = "WECHAT", Alipay = "ALIPAY", Offline = "OFFLINE" }
}

symbols! {
    /// How a relative code's relationship was, or is to be, verified.
    Verification {
        /// Verified automatically against the household register.
        AutoHousehold = "AUTO_HOUSEHOLD",
        /// Verified from a birth certificate.
        BirthCertificate = "BIRTH_CERTIFICATE",
        /// Waiting for a manual audit (`RelativeCodeAudited`).
        ManualPending = "MANUAL_PENDING",
    }
}

symbols! {
    /// Why a record was rejected (SPEC §3): `MALFORMED` and the rule-3 reasons
    /// in the order the rules apply, then `WRONG_PARTITION` (rule 1, added
    /// later: a reason's index is fixed once released, since snapshots count by it).
    Reason {
        /// Undecodable, or a field is missing or ill-typed.
        Malformed = "MALFORMED",
        /// The district is not one of the 16 codes.
        DistrictUnknown = "DISTRICT_UNKNOWN",
        /// `occurred_at` is more than 5 minutes after the record's Kafka timestamp.
        InFuture = "IN_FUTURE",
        /// The person has no code with that `code_id`.
        CodeUnknown = "CODE_UNKNOWN",
        /// The code expired before the scan.
        CodeExpired = "CODE_EXPIRED",
        /// A dynamic or relative code that was not live when scanned.
        CodeNotLive = "CODE_NOT_LIVE",
        /// A relative code whose relationship is not verified.
        RelativeUnverified = "RELATIVE_UNVERIFIED",
        /// The record's key is not its event's `person_ref` (lowercase hex), or
        /// the record is not in the partition murmur2(key) mod the partition
        /// count: the person's events would not share one partition.
        WrongPartition = "WRONG_PARTITION",
    }
}

symbols! {
    /// How a sampled person was identified, as `method_daily` counts it.
    ScanMethod {
        CodePersonal = "CODE_PERSONAL",
        CodePaper = "CODE_PAPER",
        CodeDynamic = "CODE_DYNAMIC",
        CodeRelative = "CODE_RELATIVE",
        IdDocument = "ID_DOCUMENT",
        DeclaredId = "DECLARED_ID",
    }
}

impl ScanMethod {
    /// The method of a scan identified by a code of this kind.
    pub fn of_code(kind: CodeKind) -> Self {
        match kind {
            CodeKind::Personal => ScanMethod::CodePersonal,
            CodeKind::Paper => ScanMethod::CodePaper,
            CodeKind::Dynamic => ScanMethod::CodeDynamic,
            CodeKind::Relative => ScanMethod::CodeRelative,
        }
    }

    /// Whether a person identified this way counts as using a code.
    pub fn is_code(self) -> bool {
        matches!(
            self,
            ScanMethod::CodePersonal
                | ScanMethod::CodePaper
                | ScanMethod::CodeDynamic
                | ScanMethod::CodeRelative
        )
    }
}

/// The 16 districts: administrative code, English name, and population in 2020
/// (thousands, the seventh census), which the simulator uses as weights.
pub const DISTRICTS: [(&str, &str, u32); 16] = [
    ("310101", "Huangpu", 662),
    ("310104", "Xuhui", 1113),
    ("310105", "Changning", 693),
    ("310106", "Jing'an", 976),
    ("310107", "Putuo", 1239),
    ("310109", "Hongkou", 758),
    ("310110", "Yangpu", 1243),
    ("310112", "Minhang", 2653),
    ("310113", "Baoshan", 2235),
    ("310114", "Jiading", 1834),
    ("310115", "Pudong", 5681),
    ("310116", "Jinshan", 823),
    ("310117", "Songjiang", 1910),
    ("310118", "Qingpu", 1272),
    ("310120", "Fengxian", 1140),
    ("310151", "Chongming", 637),
];

/// The position of a district code in [`DISTRICTS`], or `None` for an unknown code.
pub fn district_index(code: &str) -> Option<u8> {
    // Compared as six-byte arrays, each of the sixteen comparisons is a couple
    // of integer compares (a `str` comparison of unknown length is a call to
    // memcmp), and DISTRICTS stays the one truth.
    const CODES: [[u8; 6]; 16] = {
        let mut out = [[0u8; 6]; 16];
        let mut i = 0;
        while i < DISTRICTS.len() {
            let b = DISTRICTS[i].0.as_bytes();
            assert!(b.len() == 6, "district codes are six bytes");
            let mut j = 0;
            while j < 6 {
                out[i][j] = b[j];
                j += 1;
            }
            i += 1;
        }
        out
    };
    let code: &[u8; 6] = code.as_bytes().try_into().ok()?;
    CODES.iter().position(|c| c == code).map(|i| i as u8)
}

impl Event<'_> {
    /// Detaches the event from the buffer it was decoded from.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            event_id: Cow::Owned(self.event_id.into_owned()),
            person_ref: self.person_ref,
            occurred_at: self.occurred_at,
            body: match self.body {
                Body::CodeIssued(c) => Body::CodeIssued(CodeIssued {
                    code_id: Cow::Owned(c.code_id.into_owned()),
                    kind: c.kind,
                    channel: c.channel,
                    expires_at: c.expires_at,
                    verification: c.verification,
                }),
                Body::RelativeCodeAudited(a) => Body::RelativeCodeAudited(RelativeCodeAudited {
                    code_id: Cow::Owned(a.code_id.into_owned()),
                    approved: a.approved,
                }),
                Body::SampleScanned(s) => Body::SampleScanned(SampleScanned {
                    site_id: Cow::Owned(s.site_id.into_owned()),
                    district: Cow::Owned(s.district.into_owned()),
                    tube_id: Cow::Owned(s.tube_id.into_owned()),
                    scanner_id: Cow::Owned(s.scanner_id.into_owned()),
                    identification: match s.identification {
                        Identification::Code { code_id, generated_at } => Identification::Code {
                            code_id: Cow::Owned(code_id.into_owned()),
                            generated_at,
                        },
                        Identification::IdDocument => Identification::IdDocument,
                        Identification::DeclaredId => Identification::DeclaredId,
                    },
                }),
            },
        }
    }

    /// Checks the rules of SPEC §2.1 that go beyond types: identifier lengths,
    /// `expires_at` required for `PAPER`, `verification` only on `RELATIVE`,
    /// and every instant in years 0001–9999 (SPEC §3.1, see [`Self::check_instants`]).
    ///
    /// Both the JSON parser and the Avro decoder call this, so an event is
    /// malformed in the same cases whichever form it arrived in.
    pub fn check_shape(&self) -> Result<(), ShapeError> {
        check_id("event_id", &self.event_id)?;
        self.check_instants()?;
        match &self.body {
            Body::CodeIssued(c) => {
                check_id("code_id", &c.code_id)?;
                if c.kind == CodeKind::Paper && c.expires_at.is_none() {
                    return Err(ShapeError::new("expires_at", "is required for a PAPER code"));
                }
                if c.verification.is_some() && c.kind != CodeKind::Relative {
                    return Err(ShapeError::new(
                        "verification",
                        "is only allowed on a RELATIVE code",
                    ));
                }
            }
            Body::RelativeCodeAudited(a) => check_id("code_id", &a.code_id)?,
            Body::SampleScanned(s) => {
                check_id("site_id", &s.site_id)?;
                check_id("district", &s.district)?;
                check_id("tube_id", &s.tube_id)?;
                check_id("scanner_id", &s.scanner_id)?;
                if let Identification::Code { code_id, .. } = &s.identification {
                    check_id("identification.code_id", code_id)?;
                }
            }
        }
        Ok(())
    }

    /// Checks that `occurred_at`, `expires_at` and `identification.generated_at`
    /// lie in [`Timestamp::MIN`]..=[`Timestamp::MAX`] (SPEC §3.1). The Avro
    /// form carries any 64-bit count of microseconds; one outside the range
    /// would give a view a day that its store cannot read back.
    pub fn check_instants(&self) -> Result<(), ShapeError> {
        let check = |field, t: Timestamp| {
            t.check_range().map(drop).map_err(|problem| ShapeError::new(field, problem))
        };
        check("occurred_at", self.occurred_at)?;
        match &self.body {
            Body::CodeIssued(CodeIssued { expires_at: Some(t), .. }) => check("expires_at", *t),
            Body::SampleScanned(SampleScanned {
                identification: Identification::Code { generated_at: Some(t), .. },
                ..
            }) => check("identification.generated_at", *t),
            _ => Ok(()),
        }
    }
}

fn check_id(field: &'static str, value: &str) -> Result<(), ShapeError> {
    if value.is_empty() {
        return Err(ShapeError::new(field, "must not be empty"));
    }
    // Up to 64 bytes is always up to 64 chars; only longer strings need counting.
    if value.len() > MAX_ID_CHARS && value.chars().count() > MAX_ID_CHARS {
        return Err(ShapeError::new(field, "must be at most 64 characters"));
    }
    Ok(())
}

/// A field whose value breaks a rule of SPEC §2.1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` {problem}")]
pub struct ShapeError {
    /// The field, dotted for nested ones (`identification.code_id`).
    pub field: &'static str,
    /// What is wrong with it, as a phrase that follows the field name.
    pub problem: &'static str,
}

impl ShapeError {
    pub(crate) fn new(field: &'static str, problem: &'static str) -> Self {
        ShapeError { field, problem }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn district_index_finds_exactly_the_sixteen_codes() {
        for (i, (code, _, _)) in DISTRICTS.iter().enumerate() {
            assert_eq!(district_index(code), Some(i as u8), "{code}");
        }
        for code in ["", "31010", "3101011", "310102", "310101 ", " 31010", "３１０１"] {
            assert_eq!(district_index(code), None, "{code:?}");
        }
    }
}
