//! The mapping itself, apart from the plugin interface: what `json-map` does to one document.
//!
//! It depends only on the SDK's json module and its [`Object`] (a document parsed only as deep as
//! the mapping's paths go, untouched values kept as the input's bytes), so the benchmark
//! compiles this very file natively: the native row of `bench/results.md` runs the same code as
//! the plugin.

use std::borrow::Cow;

use patchbay_sdk::json::{Field, Object, Value};

/// The four steps, in the order they run. Built once by [`Mapping::new`], which also plans the
/// renames, so that applying it to a document does no work that depends only on the config.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    copy: Vec<(String, String)>,
    /// Renames within one object, grouped by that object (`None`: the document itself).
    in_place: Vec<InPlace>,
    /// Renames that move a field to another object: from → to.
    moves: Vec<(String, String)>,
    drop: Vec<String>,
    set: Vec<(String, Value)>,
}

/// Renames within one object: its path, and old key → new key.
#[derive(Debug, Clone)]
struct InPlace {
    parent: Option<String>,
    keys: Vec<(String, String)>,
}

impl Mapping {
    /// `copy` (from → to), `rename` (old → new), `drop` (paths), `set` (path → value).
    pub fn new(
        copy: Vec<(String, String)>,
        rename: Vec<(String, String)>,
        drop: Vec<String>,
        set: Vec<(String, Value)>,
    ) -> Mapping {
        let mut in_place: Vec<InPlace> = Vec::new();
        let mut moves = Vec::new();
        for (from, to) in rename {
            let (from_parent, from_key) = split_last(&from);
            let (to_parent, to_key) = split_last(&to);
            if from_parent == to_parent {
                let pair = (from_key.to_owned(), to_key.to_owned());
                match in_place
                    .iter_mut()
                    .find(|g| g.parent.as_deref() == from_parent)
                {
                    Some(group) => group.keys.push(pair),
                    None => in_place.push(InPlace {
                        parent: from_parent.map(str::to_owned),
                        keys: vec![pair],
                    }),
                }
            } else {
                moves.push((from, to));
            }
        }
        Mapping {
            copy,
            in_place,
            moves,
            drop,
            set,
        }
    }

    /// Apply the four steps; `Ok(true)` when the document changed.
    pub fn apply(&self, doc: &mut Object<'_>) -> Result<bool, String> {
        let mut changed = false;

        if !self.copy.is_empty() {
            let copies: Vec<(&str, &str, Field<'_>)> = self
                .copy
                .iter()
                .filter_map(|(from, to)| {
                    Some((from.as_str(), to.as_str(), doc.get_mut(from)?.clone()))
                })
                .collect();
            changed |= !copies.is_empty();
            for (from, to, value) in copies {
                doc.set(to, value)
                    .map_err(|e| format!("cannot copy `{from}` to `{to}`: {e}"))?;
            }
        }

        changed |= self.rename(doc)?;

        for path in &self.drop {
            changed |= doc.remove(path).is_some();
        }

        for (path, value) in &self.set {
            doc.set(path, Field::Value(value.clone()))
                .map_err(|e| format!("cannot set `{path}`: {e}"))?;
            changed = true;
        }
        Ok(changed)
    }

    /// The `rename` step. A field renamed within its object keeps its position there; one moved
    /// to another object is appended to it. Within the step every source is read before any
    /// target is written. `Ok(true)` when a field moved.
    fn rename(&self, doc: &mut Object<'_>) -> Result<bool, String> {
        let mut changed = false;
        let mut moved = Vec::new();
        for (from, to) in &self.moves {
            if let Some(value) = doc.remove(from) {
                moved.push((from, to, value));
            }
        }
        for group in &self.in_place {
            let object = match &group.parent {
                None => Some(&mut *doc),
                Some(parent) => doc.object_mut(parent),
            };
            if let Some(object) = object {
                changed |= rename_in(object, &group.keys);
            }
        }
        changed |= !moved.is_empty();
        for (from, to, value) in moved {
            doc.set(to, value)
                .map_err(|e| format!("cannot rename `{from}` to `{to}`: {e}"))?;
        }
        Ok(changed)
    }
}

/// Rename keys of one object together; `true` when one was present.
fn rename_in(object: &mut Object<'_>, keys: &[(String, String)]) -> bool {
    // The common case, one field renamed: in its place, over a field of the new name if any.
    if let [(from, to)] = keys {
        return object.rename(from, to);
    }
    let sources: Vec<(&str, &str)> = keys
        .iter()
        .filter(|(from, _)| object.contains_key(from))
        .map(|(from, to)| (from.as_str(), to.as_str()))
        .collect();
    if sources.is_empty() {
        return false;
    }
    let new_key = |key: &str| {
        sources
            .iter()
            .find(|(from, _)| *from == key)
            .map(|(_, to)| *to)
    };
    // A field a rename writes over (and that is not renamed itself) disappears; the renamed
    // field takes the source's position.
    let overwritten = |key: &str| sources.iter().any(|(_, to)| *to == key);
    let renamed: Object<'_> = std::mem::take(object)
        .into_iter()
        .filter_map(|(key, value)| match new_key(&key) {
            Some(to) => Some((Cow::Owned(to.to_owned()), value)),
            None if overwritten(&key) => None,
            None => Some((key, value)),
        })
        .collect();
    *object = renamed;
    true
}

/// `a.b.c` → (`Some("a.b")`, `c`); `a` → (`None`, `a`).
fn split_last(path: &str) -> (Option<&str>, &str) {
    match path.rsplit_once('.') {
        Some((parent, last)) => (Some(parent), last),
        None => (None, path),
    }
}

// Run natively by `cargo test`, through the benchmark crate that compiles this file.
#[cfg(test)]
mod tests {
    use super::*;

    fn run(mapping: &Mapping, input: &str) -> (bool, String) {
        let mut doc = Object::parse(input.as_bytes()).unwrap();
        let changed = mapping.apply(&mut doc).unwrap();
        (changed, String::from_utf8(doc.to_vec()).unwrap())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    fn rename(list: &[(&str, &str)]) -> Mapping {
        Mapping::new(Vec::new(), pairs(list), Vec::new(), Vec::new())
    }

    #[test]
    fn a_renamed_field_keeps_its_place() {
        let m = rename(&[("b", "x")]);
        assert_eq!(
            run(&m, r#"{"a":1,"b":2,"c":3}"#).1,
            r#"{"a":1,"x":2,"c":3}"#
        );
        assert_eq!(run(&m, r#"{"a":1}"#), (false, r#"{"a":1}"#.to_owned()));
    }

    #[test]
    fn renames_in_one_object_apply_together() {
        let m = rename(&[("a", "b"), ("b", "a")]);
        assert_eq!(
            run(&m, r#"{"a":1,"b":2,"c":3}"#).1,
            r#"{"b":1,"a":2,"c":3}"#
        );
    }

    #[test]
    fn a_rename_over_an_existing_field_replaces_it() {
        let m = rename(&[("a", "c")]);
        assert_eq!(run(&m, r#"{"a":1,"b":2,"c":3}"#).1, r#"{"c":1,"b":2}"#);
    }

    #[test]
    fn renames_within_nested_objects_and_moves_between_objects() {
        let m = rename(&[("user.name", "user.full"), ("user.age", "meta.age")]);
        assert_eq!(
            run(&m, r#"{"user":{"name":"Ada","age":36,"id":1}}"#).1,
            r#"{"user":{"full":"Ada","id":1},"meta":{"age":36}}"#
        );
    }

    #[test]
    fn copy_drop_and_set_run_in_order_and_keep_field_order() {
        let m = Mapping::new(
            pairs(&[("a", "z.a")]),
            pairs(&[("b", "bb")]),
            vec!["a".to_owned(), "missing".to_owned()],
            vec![("c".to_owned(), Value::from(true))],
        );
        assert_eq!(
            run(&m, r#"{"a":1,"b":2,"c":3,"d":4}"#),
            (true, r#"{"bb":2,"c":true,"d":4,"z":{"a":1}}"#.to_owned())
        );
    }

    #[test]
    fn a_target_through_a_non_object_fails_with_the_reason() {
        let m = Mapping::new(
            Vec::new(),
            Vec::new(),
            Vec::new(),
            vec![("a.b".to_owned(), Value::from(1))],
        );
        let mut doc = Object::parse(br#"{"a":5}"#).unwrap();
        assert_eq!(
            m.apply(&mut doc),
            Err("cannot set `a.b`: `a` is not an object".to_owned())
        );
    }
}
