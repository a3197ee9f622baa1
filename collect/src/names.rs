//! Interned strings (thread names, frame names): small ids in per-sample keys, and a bound
//! on how many distinct strings a long run can accumulate.

use crate::fast_map::FastMap;

/// Distinct strings kept before new ones share [`OVERFLOW`]. Thread names repeat (a host
/// runs a few hundred distinct programs), so this is only reached when something invents
/// names, e.g. a process renaming its threads with a counter.
pub const MAX_NAMES: usize = 65_536;
/// What a string beyond [`MAX_NAMES`] is shown as.
pub const OVERFLOW: &str = "[other names]";

/// A string's id in its [`Names`] table.
pub type NameId = u32;

/// Interned strings, each stored once.
#[derive(Default, Clone, Debug)]
pub struct Names {
    names: Vec<String>,
    ids: FastMap<String, u32>,
}

impl Names {
    /// The id of `name`, adding it if new (beyond [`MAX_NAMES`] the shared overflow entry).
    pub fn intern(&mut self, name: &str) -> NameId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let name = if self.names.len() >= MAX_NAMES {
            OVERFLOW
        } else {
            name
        };
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    /// The string of `id` (`[?]` for an id this table never gave out).
    pub fn get(&self, id: NameId) -> &str {
        self.names.get(id as usize).map_or("[?]", String::as_str)
    }

    /// Distinct strings held.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether nothing was interned yet.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_the_table_is_bounded() {
        let mut n = Names::default();
        let a = n.intern("a");
        assert_eq!(n.intern("a"), a);
        assert_eq!(n.get(a), "a");
        for i in 0..MAX_NAMES + 10 {
            n.intern(&format!("t{i}"));
        }
        assert_eq!(n.len(), MAX_NAMES + 1, "one shared overflow entry");
        let late = n.intern("never seen before");
        assert_eq!(n.get(late), OVERFLOW);
        assert_eq!(n.get(a), "a");
    }
}
