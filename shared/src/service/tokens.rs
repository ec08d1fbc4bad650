//! Secrets: project ids, tokens and their hashes.
//!
//! Tokens are 192-bit random values written as 48 lowercase hex characters (the reference's
//! format). Only their SHA-256 is stored; a presented token is hashed and compared in constant
//! time, so neither the store nor timing reveals a usable token.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// 48 hex characters from 24 random bytes: used for project ids, run ids, upload ids and tokens.
pub fn generate() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the operating system's random source is unavailable");
    hex(&bytes)
}

/// A 256-bit secret the service keeps to itself (a run's permutation seed), as 64 hex
/// characters; [`secret_bytes`] reads it back.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is unavailable");
    hex(&bytes)
}

/// The bytes of a secret written by [`generate_secret`]; `None` if it is not 64 hex characters.
pub fn secret_bytes(secret: &str) -> Option<[u8; 32]> {
    let digits = secret.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        *byte = (high * 16 + low) as u8;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// SHA-256 of a token, hex-encoded (what is stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(pub String);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(hex(&Sha256::digest(token.as_bytes())))
    }

    /// Whether `token` hashes to this value, in time independent of where they differ.
    pub fn matches(&self, token: &str) -> bool {
        let presented = Self::of(token);
        constant_time_eq(presented.0.as_bytes(), self.0.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_48_hex_and_distinct() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 48);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn secrets_are_256_bits_and_read_back() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(hex(&secret_bytes(&a).unwrap()), a);
        assert_eq!(secret_bytes("zz"), None);
        assert_eq!(secret_bytes(&"g".repeat(64)), None);
    }

    #[test]
    fn hash_matches_only_its_token() {
        let t = generate();
        let h = TokenHash::of(&t);
        assert!(h.matches(&t));
        assert!(!h.matches(&generate()));
        assert!(!h.matches(""));
        assert_ne!(h.0, t, "the token itself is never stored");
    }
}
