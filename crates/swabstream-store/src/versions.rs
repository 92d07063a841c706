//! Named versions of the views, one of them live (SPEC §9, "after an
//! outage"): the registry every store keeps, and its transitions as pure
//! functions, so that both stores refuse and accept exactly the same things.
//!
//! A version has a *name* that operators type (`v1`, `fix-codes`) and an
//! *id* the store gives it when it is created and never gives again. Every
//! row, checkpoint, claim and snapshot of the version is keyed by the id,
//! not the name: a name dropped and made again is a new version whose
//! epochs and offset-derived timestamps start afresh without meeting the
//! old one's (a stale writer of the old one writes under an id nobody reads,
//! and Scylla's drop shadows it for good; ARCHITECTURE.md, "How versions and
//! promotion keep the exactly-once promise").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::StoreError;

/// The version a new store starts with, and the one an SQLite store of
/// schema 2 (before versions) is migrated into: its rows become `v1`, live.
pub const FIRST_VERSION: &str = "v1";

/// The rule a version's name follows, said in errors.
pub const NAME_RULE: &str = "1 to 32 characters: lowercase ASCII letters, digits, `.`, `_` and `-`, starting with a letter or a digit";

/// Checks a version's name against [`NAME_RULE`]. Names go into statements
/// only as bound values; the rule keeps them easy to type, to read in a
/// table and to use in file names.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let mut chars = name.chars();
    let ok = (1..=32).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if ok { Ok(()) } else { Err(StoreError::VersionName(name.to_owned())) }
}

/// One version of the views: its name and the id its data is kept under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    pub name: String,
    pub id: i64,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// What the registry knows of a version besides its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionMeta {
    pub id: i64,
    pub created_at_ms: i64,
}

/// What a promotion did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    /// The version that was live before.
    pub from: Version,
    /// The version live now (`from` again when it was already live).
    pub to: Version,
}

/// Every version a store holds, which one is live, and the one live before
/// it (what `promote --back` goes back to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    pub versions: BTreeMap<String, VersionMeta>,
    pub live: String,
    pub previous: Option<String>,
    /// The id the next version gets: ids are never given twice.
    pub next_id: i64,
    /// When the live version was last promoted (ms since the Unix epoch).
    pub promoted_at_ms: Option<i64>,
    /// Ids of dropped versions whose data is not deleted yet (a Scylla drop
    /// that was interrupted); empty at rest in a transactional store.
    pub dropping: BTreeSet<i64>,
}

impl Registry {
    /// A new store's registry: [`FIRST_VERSION`], id 1, live.
    pub fn initial(now_ms: i64) -> Registry {
        Registry {
            versions: BTreeMap::from([(
                FIRST_VERSION.to_owned(),
                VersionMeta { id: 1, created_at_ms: now_ms },
            )]),
            live: FIRST_VERSION.to_owned(),
            previous: None,
            next_id: 2,
            promoted_at_ms: None,
            dropping: BTreeSet::new(),
        }
    }

    /// The names, in order, for errors that list them.
    pub fn names(&self) -> Vec<String> {
        self.versions.keys().cloned().collect()
    }

    /// The version named `name`, or an error listing the known ones.
    pub fn get(&self, name: &str) -> Result<Version, StoreError> {
        match self.versions.get(name) {
            Some(m) => Ok(Version { name: name.to_owned(), id: m.id }),
            None => Err(StoreError::UnknownVersion { name: name.to_owned(), known: self.names() }),
        }
    }

    /// The version with id `id`, if it still exists.
    pub fn by_id(&self, id: i64) -> Option<Version> {
        self.versions
            .iter()
            .find(|(_, m)| m.id == id)
            .map(|(n, m)| Version { name: n.clone(), id: m.id })
    }

    /// The live version. A registry whose live name is not among its
    /// versions is corrupt (every transition keeps it there).
    pub fn live(&self) -> Result<Version, StoreError> {
        self.get(&self.live).map_err(|_| {
            StoreError::Corrupt(format!(
                "the live version `{}` is not among the versions",
                self.live
            ))
        })
    }

    /// Adds a version named `name`; an existing name is refused (its rows
    /// would mix with a rebuild's: drop it first).
    pub fn create(&mut self, name: &str, now_ms: i64) -> Result<Version, StoreError> {
        check_name(name)?;
        if self.versions.contains_key(name) {
            return Err(StoreError::VersionExists(name.to_owned()));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.versions.insert(name.to_owned(), VersionMeta { id, created_at_ms: now_ms });
        Ok(Version { name: name.to_owned(), id })
    }

    /// Makes `name` live; the version live until now becomes the one
    /// `promote --back` returns to. Promoting the live version changes nothing.
    pub fn promote(&mut self, name: &str, now_ms: i64) -> Result<Promotion, StoreError> {
        let to = self.get(name)?;
        let from = self.live()?;
        if from == to {
            return Ok(Promotion { from, to });
        }
        self.previous = Some(from.name.clone());
        self.live = to.name.clone();
        self.promoted_at_ms = Some(now_ms);
        Ok(Promotion { from, to })
    }

    /// The version `promote --back` makes live: the one live before the
    /// last promotion, if it is still kept.
    pub fn back(&self) -> Result<Version, StoreError> {
        match &self.previous {
            None => Err(StoreError::NoPreviousVersion { live: self.live.clone(), dropped: None }),
            Some(p) => self.get(p).map_err(|_| StoreError::NoPreviousVersion {
                live: self.live.clone(),
                dropped: Some(p.clone()),
            }),
        }
    }

    /// Removes `name`; the live version is refused. Its id goes to
    /// `dropping` until the store has deleted its data.
    pub fn drop_version(&mut self, name: &str) -> Result<Version, StoreError> {
        let v = self.get(name)?;
        if v.name == self.live {
            return Err(StoreError::VersionIsLive(v.name));
        }
        self.versions.remove(name);
        self.dropping.insert(v.id);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for ok in ["v1", "2022-04-09", "fix.codes_2", "a", &"x".repeat(32)] {
            check_name(ok).unwrap();
        }
        for bad in ["", "V1", "-v", ".v", "v 1", "v/1", "é", "v;drop", &"x".repeat(33)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")) && e.contains("lowercase"), "{e}");
        }
    }

    #[test]
    fn a_new_registry_has_v1_live() {
        let r = Registry::initial(5);
        assert_eq!(r.live().unwrap(), Version { name: "v1".into(), id: 1 });
        assert_eq!(r.versions["v1"].created_at_ms, 5);
        assert!(r.back().is_err());
    }

    #[test]
    fn create_promote_back_drop() {
        let mut r = Registry::initial(0);
        let v2 = r.create("v2", 10).unwrap();
        assert_eq!(v2.id, 2);
        assert!(matches!(r.create("v2", 11), Err(StoreError::VersionExists(n)) if n == "v2"));
        assert!(matches!(r.create("V2", 11), Err(StoreError::VersionName(_))));
        let p = r.promote("v2", 20).unwrap();
        assert_eq!((p.from.name.as_str(), p.to.name.as_str()), ("v1", "v2"));
        assert_eq!((r.live.as_str(), r.previous.as_deref()), ("v2", Some("v1")));
        // Promoting the live one again changes nothing, `previous` included.
        let again = r.promote("v2", 30).unwrap();
        assert_eq!(again.from, again.to);
        assert_eq!((r.previous.as_deref(), r.promoted_at_ms), (Some("v1"), Some(20)));
        assert_eq!(r.back().unwrap().name, "v1");
        r.promote("v1", 40).unwrap();
        assert_eq!(r.back().unwrap().name, "v2");
        // The live one is never dropped; the other one is, and its id is
        // never given again.
        assert!(matches!(r.drop_version("v1"), Err(StoreError::VersionIsLive(_))));
        assert_eq!(r.drop_version("v2").unwrap().id, 2);
        assert!(r.dropping.contains(&2));
        let e = r.back().unwrap_err().to_string();
        assert!(e.contains("v2") && e.contains("dropped"), "{e}");
        assert_eq!(r.create("v2", 50).unwrap().id, 3);
        let e = r.get("nope").unwrap_err().to_string();
        assert!(e.contains("`nope`") && e.contains("v1, v2"), "{e}");
        assert!(r.promote("nope", 60).is_err());
        assert_eq!(r.by_id(3).unwrap().name, "v2");
        assert_eq!(r.by_id(2), None);
    }
}
