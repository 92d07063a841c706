//! The JSON form of SPEC §2.1: HTTP bodies and JSON-lines files.
//!
//! Parsing goes through a `serde_json::Value` rather than a derived
//! deserialiser so that every error can name the field and say what is wrong
//! with it ("field `district` must be a string"), which is what a scanner
//! vendor reading a 400 response or a `publish` report needs.

use std::borrow::Cow;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::model::{
    Body, Channel, CodeIssued, CodeKind, Event, Identification, PersonRef, RelativeCodeAudited,
    SampleScanned, Verification,
};
use crate::pseudonym::PseudonymKey;
use crate::time::Timestamp;

/// What is wrong with a JSON event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The text is not JSON at all, or not a JSON object.
    #[error("not a JSON object: {0}")]
    Syntax(String),
    /// A field is missing, ill-typed or breaks a rule of SPEC §2.1.
    #[error("field `{field}` {problem}")]
    Field {
        /// The field, dotted for nested ones (`identification.method`).
        field: String,
        /// What is wrong, as a phrase following the field name.
        problem: String,
    },
}

impl JsonError {
    fn field(field: &str, problem: impl Into<String>) -> Self {
        JsonError::Field { field: field.to_owned(), problem: problem.into() }
    }

    /// The field this error is about, when it is about one.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            JsonError::Field { field, .. } => Some(field),
            JsonError::Syntax(_) => None,
        }
    }
}

/// Parses one event from JSON text. `person_ref` must be given as a pseudonym.
pub fn parse_event(text: &str) -> Result<Event<'static>, JsonError> {
    parse_event_with(text, None)
}

/// Parses one event from JSON text; with a key, an event may carry `id_number`
/// instead of `person_ref`, and is pseudonymised here, at the edge.
pub fn parse_event_with(
    text: &str,
    key: Option<&PseudonymKey>,
) -> Result<Event<'static>, JsonError> {
    let value: Value = serde_json::from_str(text).map_err(|e| JsonError::Syntax(e.to_string()))?;
    event_from_value(&value, key)
}

/// Builds an event from an already parsed JSON value (an element of a request's array, say).
pub fn event_from_value(
    value: &Value,
    key: Option<&PseudonymKey>,
) -> Result<Event<'static>, JsonError> {
    let obj = value.as_object().ok_or_else(|| {
        JsonError::Syntax(format!("expected an object, found {}", kind_of(value)))
    })?;
    let f = Fields { obj, prefix: "" };
    let type_name = f.string("type")?;
    // The type decides which fields are required, so an unknown one is reported first.
    if !matches!(type_name, "CodeIssued" | "RelativeCodeAudited" | "SampleScanned") {
        return Err(JsonError::field(
            "type",
            format!(
                "must be CodeIssued, RelativeCodeAudited or SampleScanned, found `{}`",
                clip(type_name)
            ),
        ));
    }
    let event_id = f.string("event_id")?;
    let person_ref = person_ref(obj, key)?;
    let occurred_at = f.timestamp("occurred_at")?;
    let body = match type_name {
        "CodeIssued" => Body::CodeIssued(CodeIssued {
            code_id: Cow::Owned(f.string("code_id")?.to_owned()),
            kind: f.symbol("kind", CodeKind::from_str, "PERSONAL, PAPER, DYNAMIC or RELATIVE")?,
            channel: f.symbol("channel", Channel::from_str, "APP, WECHAT, ALIPAY or OFFLINE")?,
            expires_at: f.optional("expires_at", |f| f.timestamp("expires_at"))?,
            verification: f.optional("verification", |f| {
                f.symbol(
                    "verification",
                    Verification::from_str,
                    "AUTO_HOUSEHOLD, BIRTH_CERTIFICATE or MANUAL_PENDING",
                )
            })?,
        }),
        "RelativeCodeAudited" => Body::RelativeCodeAudited(RelativeCodeAudited {
            code_id: Cow::Owned(f.string("code_id")?.to_owned()),
            approved: f.bool("approved")?,
        }),
        "SampleScanned" => {
            let ident = f.get("identification")?;
            let ident_obj = ident.as_object().ok_or_else(|| {
                JsonError::field(
                    "identification",
                    format!("must be an object, found {}", kind_of(ident)),
                )
            })?;
            let i = Fields { obj: ident_obj, prefix: "identification." };
            let identification = match i.string("method")? {
                "CODE" => Identification::Code {
                    code_id: Cow::Owned(i.string("code_id")?.to_owned()),
                    generated_at: i.optional("generated_at", |i| i.timestamp("generated_at"))?,
                },
                "ID_DOCUMENT" => Identification::IdDocument,
                "DECLARED_ID" => Identification::DeclaredId,
                other => {
                    return Err(JsonError::field(
                        "identification.method",
                        format!(
                            "must be CODE, ID_DOCUMENT or DECLARED_ID, found `{}`",
                            clip(other)
                        ),
                    ));
                }
            };
            Body::SampleScanned(SampleScanned {
                site_id: Cow::Owned(f.string("site_id")?.to_owned()),
                district: Cow::Owned(f.string("district")?.to_owned()),
                tube_id: Cow::Owned(f.string("tube_id")?.to_owned()),
                scanner_id: Cow::Owned(f.string("scanner_id")?.to_owned()),
                identification,
            })
        }
        _ => unreachable!("the type was checked above"),
    };
    let event = Event { event_id: Cow::Owned(event_id.to_owned()), person_ref, occurred_at, body };
    event.check_shape().map_err(|e| JsonError::field(e.field, e.problem))?;
    Ok(event)
}

fn person_ref(
    obj: &Map<String, Value>,
    key: Option<&PseudonymKey>,
) -> Result<PersonRef, JsonError> {
    let f = Fields { obj, prefix: "" };
    match (obj.get("person_ref"), obj.get("id_number"), key) {
        (Some(_), Some(_), _) => Err(JsonError::field(
            "id_number",
            "must not be sent together with person_ref; send one of them",
        )),
        (Some(_), None, _) | (None, None, None) => PersonRef::parse_hex(f.string("person_ref")?)
            .map_err(|p| JsonError::field("person_ref", p)),
        (None, Some(_), Some(key)) => {
            let id = f.string("id_number")?;
            key.person_ref(id).map_err(|p| JsonError::field("id_number", p))
        }
        (None, Some(_), None) => Err(JsonError::field(
            "id_number",
            "is not accepted here: send person_ref, the pseudonym, instead",
        )),
        (None, None, Some(_)) => {
            Err(JsonError::field("person_ref", "is missing (or send id_number)"))
        }
    }
}

/// Field access with errors that name the field.
struct Fields<'v> {
    obj: &'v Map<String, Value>,
    prefix: &'static str,
}

impl<'v> Fields<'v> {
    fn name(&self, field: &str) -> String {
        format!("{}{}", self.prefix, field)
    }

    fn get(&self, field: &str) -> Result<&'v Value, JsonError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Err(JsonError::field(&self.name(field), "is missing")),
            Some(v) => Ok(v),
        }
    }

    fn optional<T>(
        &self,
        field: &str,
        read: impl FnOnce(&Self) -> Result<T, JsonError>,
    ) -> Result<Option<T>, JsonError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => read(self).map(Some),
        }
    }

    fn string(&self, field: &str) -> Result<&'v str, JsonError> {
        let v = self.get(field)?;
        v.as_str().ok_or_else(|| {
            JsonError::field(&self.name(field), format!("must be a string, found {}", kind_of(v)))
        })
    }

    fn bool(&self, field: &str) -> Result<bool, JsonError> {
        let v = self.get(field)?;
        v.as_bool().ok_or_else(|| {
            JsonError::field(
                &self.name(field),
                format!("must be true or false, found {}", kind_of(v)),
            )
        })
    }

    fn timestamp(&self, field: &str) -> Result<Timestamp, JsonError> {
        let s = self.string(field)?;
        Timestamp::parse_rfc3339(s).map_err(|p| JsonError::field(&self.name(field), p))
    }

    fn symbol<T>(
        &self,
        field: &str,
        parse: fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Result<T, JsonError> {
        let s = self.string(field)?;
        parse(s).ok_or_else(|| {
            JsonError::field(&self.name(field), format!("must be {allowed}, found `{}`", clip(s)))
        })
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Quotes at most 40 characters of a bad value, so an error stays one readable line.
fn clip(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Renders an event as one line of JSON in the form of SPEC §2.1, timestamps in UTC+8.
pub fn to_json(event: &Event<'_>) -> String {
    serde_json::to_string(&JsonForm(event)).expect("an event always serialises")
}

struct JsonForm<'e, 'a>(&'e Event<'a>);

impl Serialize for JsonForm<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", e.body.type_name())?;
        m.serialize_entry("event_id", &*e.event_id)?;
        m.serialize_entry("person_ref", &e.person_ref.to_hex())?;
        m.serialize_entry("occurred_at", &e.occurred_at.to_rfc3339())?;
        match &e.body {
            Body::CodeIssued(c) => {
                m.serialize_entry("code_id", &*c.code_id)?;
                m.serialize_entry("kind", c.kind.as_str())?;
                m.serialize_entry("channel", c.channel.as_str())?;
                if let Some(t) = c.expires_at {
                    m.serialize_entry("expires_at", &t.to_rfc3339())?;
                }
                if let Some(v) = c.verification {
                    m.serialize_entry("verification", v.as_str())?;
                }
            }
            Body::RelativeCodeAudited(a) => {
                m.serialize_entry("code_id", &*a.code_id)?;
                m.serialize_entry("approved", &a.approved)?;
            }
            Body::SampleScanned(sc) => {
                m.serialize_entry("site_id", &*sc.site_id)?;
                m.serialize_entry("district", &*sc.district)?;
                m.serialize_entry("tube_id", &*sc.tube_id)?;
                m.serialize_entry("scanner_id", &*sc.scanner_id)?;
                m.serialize_entry("identification", &IdentForm(&sc.identification))?;
            }
        }
        m.end()
    }
}

struct IdentForm<'e, 'a>(&'e Identification<'a>);

impl Serialize for IdentForm<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("method", self.0.method_name())?;
        if let Identification::Code { code_id, generated_at } = self.0 {
            m.serialize_entry("code_id", &**code_id)?;
            if let Some(t) = generated_at {
                m.serialize_entry("generated_at", &t.to_rfc3339())?;
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "4f2a0c9be1d84f3aa6a1c0f1e2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4e5f";

    fn scan(extra: &str) -> String {
        format!(
            r#"{{"type":"SampleScanned","event_id":"e1","person_ref":"{P}","occurred_at":"2022-04-09T08:15:00+08:00","site_id":"S1","district":"310104","tube_id":"T1","scanner_id":"D1"{extra}}}"#
        )
    }

    fn err_of(text: &str) -> String {
        parse_event(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_type_and_renders_it_back() {
        let lines = [
            format!(
                r#"{{"type":"CodeIssued","event_id":"c1","person_ref":"{P}","occurred_at":"2022-04-08T20:00:00+08:00","code_id":"K1","kind":"PAPER","channel":"OFFLINE","expires_at":"2022-04-30T00:00:00+08:00"}}"#
            ),
            format!(
                r#"{{"type":"CodeIssued","event_id":"c2","person_ref":"{P}","occurred_at":"2022-04-08T20:00:00+08:00","code_id":"K2","kind":"RELATIVE","channel":"WECHAT","verification":"MANUAL_PENDING"}}"#
            ),
            format!(
                r#"{{"type":"RelativeCodeAudited","event_id":"a1","person_ref":"{P}","occurred_at":"2022-04-08T21:00:00+08:00","code_id":"K2","approved":true}}"#
            ),
            scan(
                r#","identification":{"method":"CODE","code_id":"K2","generated_at":"2022-04-09T08:14:50+08:00"}"#,
            ),
            scan(r#","identification":{"method":"ID_DOCUMENT"}"#),
            scan(r#","identification":{"method":"DECLARED_ID"}"#),
        ];
        for line in &lines {
            let e = parse_event(line).unwrap();
            assert_eq!(&to_json(&e), line);
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_offsets_normalised() {
        let text = scan(r#","identification":{"method":"ID_DOCUMENT","extra":1},"firmware":"2.1""#)
            .replace("2022-04-09T08:15:00+08:00", "2022-04-09T00:15:00Z");
        let e = parse_event(&text).unwrap();
        assert_eq!(e.occurred_at.to_rfc3339(), "2022-04-09T08:15:00+08:00");
    }

    #[test]
    fn errors_name_the_field_and_the_problem() {
        assert_eq!(err_of(&scan("")), "field `identification` is missing");
        assert_eq!(
            err_of(&scan(r#","identification":{"method":"FACE"}"#)),
            "field `identification.method` must be CODE, ID_DOCUMENT or DECLARED_ID, found `FACE`"
        );
        assert_eq!(
            err_of(&scan(r#","identification":{"method":"CODE"}"#)),
            "field `identification.code_id` is missing"
        );
        assert_eq!(
            err_of(
                &scan(r#","identification":{"method":"ID_DOCUMENT"}"#)
                    .replace(r#""district":"310104""#, r#""district":310104"#)
            ),
            "field `district` must be a string, found a number"
        );
        assert_eq!(
            err_of(&scan(r#","identification":{"method":"ID_DOCUMENT"}"#).replace(P, "ABC")),
            "field `person_ref` must be 64 lowercase hex characters"
        );
        assert_eq!(
            err_of(
                &scan(r#","identification":{"method":"ID_DOCUMENT"}"#)
                    .replace("2022-04-09T08:15:00+08:00", "yesterday")
            ),
            "field `occurred_at` must be an RFC 3339 timestamp with an offset, e.g. 2022-04-09T08:15:00+08:00"
        );
        assert_eq!(
            err_of(
                &scan(r#","identification":{"method":"ID_DOCUMENT"}"#)
                    .replace(r#""event_id":"e1""#, r#""event_id":"""#)
            ),
            "field `event_id` must not be empty"
        );
        let long = "x".repeat(65);
        assert_eq!(
            err_of(
                &scan(r#","identification":{"method":"ID_DOCUMENT"}"#)
                    .replace(r#""tube_id":"T1""#, &format!(r#""tube_id":"{long}""#))
            ),
            "field `tube_id` must be at most 64 characters"
        );
        assert_eq!(
            err_of(&format!(
                r#"{{"type":"CodeIssued","event_id":"c1","person_ref":"{P}","occurred_at":"2022-04-08T20:00:00+08:00","code_id":"K1","kind":"PAPER","channel":"OFFLINE"}}"#
            )),
            "field `expires_at` is required for a PAPER code"
        );
        assert_eq!(
            err_of(&format!(
                r#"{{"type":"CodeIssued","event_id":"c1","person_ref":"{P}","occurred_at":"2022-04-08T20:00:00+08:00","code_id":"K1","kind":"PERSONAL","channel":"APP","verification":"AUTO_HOUSEHOLD"}}"#
            )),
            "field `verification` is only allowed on a RELATIVE code"
        );
        assert_eq!(
            err_of(r#"{"type":"Vaccinated"}"#),
            "field `type` must be CodeIssued, RelativeCodeAudited or SampleScanned, found `Vaccinated`"
        );
        assert!(err_of("[1,2]").starts_with("not a JSON object"));
        assert!(err_of("{\"type\":").starts_with("not a JSON object"));
    }

    #[test]
    fn id_numbers_are_pseudonymised_only_with_a_key() {
        let text = scan(r#","identification":{"method":"DECLARED_ID"}"#)
            .replace(&format!(r#""person_ref":"{P}""#), r#""id_number":"31010419800101123X""#);
        assert_eq!(
            parse_event(&text).unwrap_err().to_string(),
            "field `id_number` is not accepted here: send person_ref, the pseudonym, instead"
        );
        let key = PseudonymKey::new(b"test key of the city".to_vec()).unwrap();
        let e = parse_event_with(&text, Some(&key)).unwrap();
        assert_eq!(e.person_ref, key.person_ref("31010419800101123X").unwrap());
        assert!(!to_json(&e).contains("31010419800101123X"));
    }
}
