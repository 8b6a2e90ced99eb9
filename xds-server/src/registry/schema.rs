//! The registry's key list, read from the raw serde types themselves.
//!
//! [`registry_keys`] drives `RawRegistry`'s derived `Deserialize` with a probing
//! deserializer: serde hands every struct's complete field list to `deserialize_struct`
//! (the same list `deny_unknown_fields` checks against), and the probe then feeds each field
//! a value that descends into its type (an `Option` is `Some`, a list has one element, a map
//! one entry named `<*>`). No hand-kept list exists, so the keys cannot drift from what the
//! validator accepts: the test below compares them with the key tables of
//! `docs/registry.md` in both directions.
//!
//! Key syntax: dotted paths, `[]` after a list, `<*>` for a map's user-chosen key
//! (`policy.roles.<*>.allow`; the docs write `<role>`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::raw::RawRegistry;

/// The name a probed map key gets.
pub const MAP_KEY: &str = "<*>";

/// Every key path the registry accepts (intermediate ones included), e.g.
/// `servers[].health_check.type`. Errs only when a raw type needs a shape the probe cannot
/// produce (the message names the path).
pub fn registry_keys() -> Result<BTreeSet<String>, String> {
    let keys = RefCell::new(BTreeSet::new());
    RawRegistry::deserialize(Probe { path: String::new(), keys: &keys }).map_err(|e| e.0)?;
    Ok(keys.into_inner())
}

/// The keys a registry author must find documented: every key with no key below it.
pub fn leaf_keys(keys: &BTreeSet<String>) -> BTreeSet<String> {
    keys.iter()
        .filter(|k| !keys.iter().any(|o| o.len() > k.len() && o.starts_with(k.as_str()) && is_below(&o[k.len()..])))
        .cloned()
        .collect()
}

fn is_below(rest: &str) -> bool {
    rest.starts_with('.') || rest.starts_with("[]")
}

#[derive(Debug)]
struct ProbeError(String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ProbeError(msg.to_string())
    }
}

/// Stands in for one value at `path`, recording every key path it is asked about.
struct Probe<'k> {
    path: String,
    keys: &'k RefCell<BTreeSet<String>>,
}

impl<'k> Probe<'k> {
    fn child(&self, suffix: &str) -> Probe<'k> {
        let path = if self.path.is_empty() || suffix.starts_with('[') {
            format!("{}{suffix}", self.path)
        } else {
            format!("{}.{suffix}", self.path)
        };
        Probe { path, keys: self.keys }
    }

    fn record(&self) {
        self.keys.borrow_mut().insert(self.path.clone());
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        // Free-form values (e.g. `serde_json::Value`): a leaf.
        visitor.visit_unit()
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_i64(0)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_i64(0)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_i64(0)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_i64(0)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_u64(0)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_u64(0)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_u64(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_u64(0)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_f64(0.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_f64(0.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_char('x')
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_str("x")
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_str("x")
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_bytes(b"x")
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_bytes(b"x")
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_seq(OneElement { probe: Some(self.child("[]")) })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let entry = self.child(MAP_KEY);
        entry.record();
        visitor.visit_map(Fields { names: vec![MAP_KEY], next: 0, parent: self, entry: Some(entry) })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        for field in fields {
            self.child(field).record();
        }
        visitor.visit_map(Fields { names: fields.to_vec(), next: 0, parent: self, entry: None })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // A value spelled as one of the variants: the first one stands for all.
        match variants.first() {
            Some(variant) => visitor.visit_enum(Variant { name: variant, probe: self }),
            None => Err(ProbeError(format!("{}: an enum without variants", self.path))),
        }
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_str(visitor)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }
}

/// One variant of an enum, its content (if any) probed at the enum's path.
struct Variant<'k> {
    name: &'static str,
    probe: Probe<'k>,
}

impl<'de, 'k> de::EnumAccess<'de> for Variant<'k> {
    type Error = ProbeError;
    type Variant = Probe<'k>;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self::Variant), Self::Error> {
        let name: de::value::StrDeserializer<'_, ProbeError> = self.name.into_deserializer();
        Ok((seed.deserialize(name)?, self.probe))
    }
}

impl<'de> de::VariantAccess<'de> for Probe<'_> {
    type Error = ProbeError;

    fn unit_variant(self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Self::Error> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Self::Error> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

/// A list with exactly one probed element.
struct OneElement<'k> {
    probe: Option<Probe<'k>>,
}

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = ProbeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Self::Error> {
        match self.probe.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

/// A struct's fields (each probed), or a map's one `<*>` entry.
struct Fields<'k> {
    names: Vec<&'static str>,
    next: usize,
    parent: Probe<'k>,
    /// For a map: the probe of its one value.
    entry: Option<Probe<'k>>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        match self.names.get(self.next) {
            Some(name) => {
                let key: de::value::StrDeserializer<'_, ProbeError> = (*name).into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Self::Error> {
        let name = self.names.get(self.next).copied().unwrap_or_default();
        self.next += 1;
        let probe = match self.entry.take() {
            Some(entry) => entry,
            None => self.parent.child(name),
        };
        seed.deserialize(probe)
    }
}

#[cfg(test)]
mod tests;
