//! A list of strings held in one allocation, for the lists a step declares
//! (a `command`'s `run:` argv, its `inputs:` and `outputs:`).
//!
//! Each element is followed by a NUL, which no argument or path can contain
//! (the kernel takes both as C strings). A workflow of 10,000 `command` steps
//! held four small allocations per step for its one-element `run:` and
//! `inputs:` lists (a `Vec` and a `String` each, 32 bytes at least apiece, plus
//! the `Vec`s' 24-byte headers): one per list now. Reads and writes as a list
//! of strings, in YAML, JSON and the schema alike.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A list of strings in one allocation; see the module's header.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct StrList(Box<str>);

impl StrList {
    /// Its elements, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &str> + Clone + '_ {
        // Empty: no elements; else the last NUL ends the last element.
        (self.0.strip_suffix('\0').into_iter()).flat_map(|body| body.split('\0'))
    }

    /// How many elements.
    pub fn len(&self) -> usize {
        self.0.bytes().filter(|&b| b == 0).count()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Its first element.
    pub fn first(&self) -> Option<&str> {
        self.iter().next()
    }

    /// Its elements as owned strings.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }

    /// The list of `items`; `None` when one contains a NUL.
    pub fn try_from_iter<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Option<StrList> {
        let mut all = String::new();
        for item in items {
            let item = item.as_ref();
            if item.contains('\0') {
                return None;
            }
            all.push_str(item);
            all.push('\0');
        }
        Some(StrList(all.into_boxed_str()))
    }
}

impl fmt::Debug for StrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a StrList {
    type Item = &'a str;
    type IntoIter = Box<dyn Iterator<Item = &'a str> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl Serialize for StrList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for StrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrList, D::Error> {
        struct Elements;
        impl<'de> serde::de::Visitor<'de> for Elements {
            type Value = StrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StrList, A::Error> {
                let mut all = String::new();
                while let Some(item) = seq.next_element::<Cow<'de, str>>()? {
                    if item.contains('\0') {
                        return Err(serde::de::Error::custom(
                            "a list element contains a NUL character, which no argument or path can hold",
                        ));
                    }
                    all.push_str(&item);
                    all.push('\0');
                }
                Ok(StrList(all.into_boxed_str()))
            }
        }
        d.deserialize_seq(Elements)
    }
}

impl schemars::JsonSchema for StrList {
    fn schema_name() -> Cow<'static, str> {
        <Vec<String>>::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        <Vec<String>>::schema_id()
    }

    fn inline_schema() -> bool {
        <Vec<String>>::inline_schema()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <Vec<String>>::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> StrList {
        StrList::try_from_iter(items).unwrap()
    }

    #[test]
    fn a_list_gives_back_its_elements_empty_ones_included() {
        for items in [
            &[][..],
            &[""][..],
            &["", ""][..],
            &["true"][..],
            &["sh", "-c", "echo a b", ""][..],
        ] {
            let l = list(items);
            assert_eq!(l.iter().collect::<Vec<_>>(), items, "{items:?}");
            assert_eq!(l.len(), items.len(), "{items:?}");
            assert_eq!(l.is_empty(), items.is_empty(), "{items:?}");
            assert_eq!(l.first(), items.first().copied(), "{items:?}");
        }
    }

    #[test]
    fn a_list_reads_and_writes_as_a_json_list_of_strings() {
        let l: StrList = serde_json::from_str(r#"["make", "-C", "linux\ttree", ""]"#).unwrap();
        assert_eq!(l.to_vec(), ["make", "-C", "linux\ttree", ""]);
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"["make","-C","linux\ttree",""]"#
        );
        let empty: StrList = serde_json::from_str("[]").unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn an_element_with_a_nul_is_refused() {
        let err = serde_json::from_str::<StrList>(r#"["a\u0000b"]"#).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
        assert!(StrList::try_from_iter(["a\0b"]).is_none());
    }

    #[test]
    fn a_string_is_not_a_list() {
        assert!(serde_json::from_str::<StrList>(r#""make""#).is_err());
    }
}
