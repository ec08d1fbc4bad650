//! Blocks: which records may be compared at all.
//!
//! The reference service compares two parties' records only when they share a block. A block is
//! named by the data provider (blocklib output, or `"1"` when a project does not block). We name
//! a block internally by a [`BlockKey`]: the first 16 bytes of SHA-256 of the id's string form.
//! Fixed-size keys keep the packed index compact and sortable, and 128 bits make an accidental
//! collision between two block ids of one project practically impossible.
//!
//! Block ids arrive as JSON strings or integers. The reference hashes `str(id)`, so the integer
//! `3` and the string `"3"` name the same block; [`block_key_of_json`] follows that rule.
//!
//! Which blocks two parties share, and how many comparisons that makes, is a question about
//! their packed layouts: `packed::common_blocks` and `packed::total_comparisons`.

use serde::de::{self, Deserializer, Visitor};
use sha2::{Digest, Sha256};
use std::fmt;


/// First 16 bytes of SHA-256 of the block id's string form. JSON integers use their decimal
/// string (Python's str()), so block 3 and block "3" are the same block, as in the reference.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize,
)]
pub struct BlockKey(pub [u8; 16]);

impl BlockKey {
    /// The key of the block with this id (its string form, see the module doc).
    pub fn of(id: &str) -> Self {
        let digest = Sha256::digest(id.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        BlockKey(key)
    }

    /// The block every record of an unblocked upload belongs to (the reference's block `"1"`).
    pub fn default_block() -> Self {
        Self::of("1")
    }
}

/// Why a JSON value cannot name a block.
pub(crate) const BLOCK_ID_EXPECTATION: &str = "a block id (a string or an integer)";

/// Deserializes one block id (string or integer) straight into its [`BlockKey`], without
/// building a `serde_json::Value`.
///
/// Floats, booleans, null, arrays and objects are refused: Python would hash `str(1.0)` = `"1.0"`
/// or `str(True)` = `"True"`, but no blocking tool emits such ids and reproducing Python's float
/// formatting is not worth the risk of silently naming a different block.
pub(crate) struct BlockKeySeed;

impl<'de> de::DeserializeSeed<'de> for BlockKeySeed {
    type Value = BlockKey;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<BlockKey, D::Error> {
        deserializer.deserialize_any(BlockKeyVisitor)
    }
}

struct BlockKeyVisitor;

impl<'de> Visitor<'de> for BlockKeyVisitor {
    type Value = BlockKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(BLOCK_ID_EXPECTATION)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<BlockKey, E> {
        Ok(BlockKey::of(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<BlockKey, E> {
        Ok(BlockKey::of(&v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<BlockKey, E> {
        Ok(BlockKey::of(&v.to_string()))
    }
}

/// The key of a block id given as a parsed JSON value (string or integer; see [`BlockKeySeed`]
/// for what is refused). Returns `None` for anything that cannot name a block.
pub fn block_key_of_json(value: &serde_json::Value) -> Option<BlockKey> {
    match value {
        serde_json::Value::String(s) => Some(BlockKey::of(s)),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
            Some(BlockKey::of(&n.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_and_string_ids_name_the_same_block() {
        let from_int: BlockKey =
            de::DeserializeSeed::deserialize(BlockKeySeed, &mut serde_json::Deserializer::from_str("3"))
                .unwrap();
        assert_eq!(from_int, BlockKey::of("3"));
        let negative: BlockKey =
            de::DeserializeSeed::deserialize(BlockKeySeed, &mut serde_json::Deserializer::from_str("-7"))
                .unwrap();
        assert_eq!(negative, BlockKey::of("-7"));
        assert_eq!(block_key_of_json(&serde_json::json!(3)), Some(BlockKey::of("3")));
        assert_eq!(block_key_of_json(&serde_json::json!("3")), Some(BlockKey::of("3")));
        assert_eq!(block_key_of_json(&serde_json::json!(1.5)), None);
        assert_eq!(BlockKey::default_block(), BlockKey::of("1"));
        assert_ne!(BlockKey::of("1"), BlockKey::of("01"));
    }

    #[test]
    fn floats_and_booleans_are_not_block_ids() {
        for body in ["1.0", "true", "null", "[1]", "{}"] {
            let r: Result<BlockKey, _> = de::DeserializeSeed::deserialize(
                BlockKeySeed,
                &mut serde_json::Deserializer::from_str(body),
            );
            assert!(r.is_err(), "{body} must be refused");
        }
    }
}
