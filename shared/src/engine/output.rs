//! The API's result shapes, byte-compatible with what the reference service returns.
//!
//! - `groups`: `{"groups":[[[d,r],...],...]}`.
//! - `similarity_scores`: `{"similarity_scores":[[[d0,r0],[d1,r1],score],...]}`, streamed,
//!   because a run can have hundreds of millions of candidates. Scores are written as Python's
//!   `repr(float)` ([`format_score`]): the reference's correctness tests compare them with exact
//!   equality, so they must be the shortest string that round-trips to the same f64.
//! - `permutations`: the reference construction of `tasks/permutation.py` (see [`permutations`]),
//!   with a small seeded PRNG in place of Python's `random` so results are reproducible.
//! - `mapping`: the pre-1.13 result type, `{"mapping":{"a":"b",...}}`, for old clients.
//!
//! JSON is written by hand: the shapes are fixed, and hand-writing keeps floats in Python's form
//! (serde_json would print `1e-5` where Python prints `1e-05`).

use std::fmt::Write as _;
use std::io::{self, Write};

use super::candidates::Candidate;
use super::solver::Group;

/// Python's `repr()` of a float: the shortest digits that round-trip, in positional notation
/// when the decimal exponent is in [-4, 16) (always with a fractional part: `1.0`), otherwise
/// in scientific notation with a signed, at least two-digit exponent (`1e-05`, `1.5e+16`).
pub fn format_score(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // Rust's `{:e}` prints the same shortest round-trip digits as Python's repr, as
    // `d[.ddd]e<exp>`; only the layout differs.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };

    if !(-4..16).contains(&exp) {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{mantissa}e{exp_sign}{:02}", exp.unsigned_abs());
    }
    // Position of the decimal point relative to the start of `digits`.
    let point = exp + 1;
    let n = digits.len() as i32;
    let body = if point <= 0 {
        format!("0.{}{}", "0".repeat(point.unsigned_abs() as usize), digits)
    } else if point < n {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    } else {
        format!("{}{}.0", digits, "0".repeat((point - n) as usize))
    };
    format!("{sign}{body}")
}

fn write_group<W: Write>(w: &mut W, group: &[(u32, u32)]) -> io::Result<()> {
    w.write_all(b"[")?;
    for (i, (d, r)) in group.iter().enumerate() {
        let sep = if i > 0 { "," } else { "" };
        write!(w, "{sep}[{d},{r}]")?;
    }
    w.write_all(b"]")
}

/// One `similarity_scores` entry: `[[d0,r0],[d1,r1],score]`.
fn write_scored_pair<W: Write>(w: &mut W, c: &Candidate) -> io::Result<()> {
    write!(w, "[[{},{}],[{},{}],{}]", c.d0, c.r0, c.d1, c.r1, format_score(c.score))
}

/// Streams `{"groups":[[[d,r],...],...]}` (groups in the order given). Buffer `w`.
pub fn write_groups<W: Write, G: AsRef<[(u32, u32)]>>(mut w: W, groups: impl IntoIterator<Item = G>) -> io::Result<()> {
    w.write_all(b"{\"groups\":")?;
    write_group_list(&mut w, groups)?;
    w.write_all(b"}")?;
    w.flush()
}

/// `[[[d,r],...],...]`.
fn write_group_list<W: Write, G: AsRef<[(u32, u32)]>>(w: &mut W, groups: impl IntoIterator<Item = G>) -> io::Result<()> {
    w.write_all(b"[")?;
    for (i, g) in groups.into_iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_group(w, g.as_ref())?;
    }
    w.write_all(b"]")
}

/// The groups of two-party matches `(record of party 0, record of party 1)`, ascending, as
/// [`write_groups`] takes them: the same bytes as the groups [`super::solver::greedy_solve`]
/// returns for the same matches.
pub fn pair_groups(pairs: &[(u32, u32)]) -> impl Iterator<Item = [(u32, u32); 2]> + '_ {
    pairs.iter().map(|&(a, b)| [(0, a), (1, b)])
}

/// Streams `{"groups":[...],"group_scores":[[[[d0,r0],[d1,r1],score],...],...]}`: the groups as
/// [`write_groups`] writes them, then for each group (same order) its edges in the
/// `similarity_scores` entry format. The opt-in answer of a run posted with `group_scores`
/// (docs/api-compatibility.md); clients that read only `groups` read the same groups. Buffer `w`.
pub fn write_scored_groups<W: Write, G: AsRef<[(u32, u32)]>, E: AsRef<[Candidate]>>(mut w: W, groups: &[G], edges: &[E]) -> io::Result<()> {
    w.write_all(b"{\"groups\":")?;
    write_group_list(&mut w, groups)?;
    w.write_all(b",\"group_scores\":[")?;
    for (i, e) in edges.iter().enumerate() {
        w.write_all(if i > 0 { b",[" } else { b"[" })?;
        for (j, c) in e.as_ref().iter().enumerate() {
            if j > 0 {
                w.write_all(b",")?;
            }
            write_scored_pair(&mut w, c)?;
        }
        w.write_all(b"]")?;
    }
    w.write_all(b"]}")?;
    w.flush()
}

/// `{"groups":[[[d,r],...],...]}`.
pub fn groups_json(groups: &[Group]) -> String {
    let mut out = Vec::with_capacity(16 + groups.len() * 24);
    let _ = write_groups(&mut out, groups);
    String::from_utf8(out).unwrap_or_default()
}

/// Streams `{"similarity_scores":[[[d0,r0],[d1,r1],score],...]}` in the order given.
/// Buffer `w` (e.g. `BufWriter`) when it is a file or socket: entries are written one by one.
pub fn write_similarity_scores<W: Write>(
    w: W,
    cands: impl Iterator<Item = Candidate>,
) -> io::Result<()> {
    let mut out = SimilarityScoresWriter::new(w)?;
    for c in cands {
        out.write(&c)?;
    }
    out.finish().map(drop)
}

/// [`write_similarity_scores`] one candidate at a time, for callers that feed several outputs
/// from one stream.
pub struct SimilarityScoresWriter<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> SimilarityScoresWriter<W> {
    pub fn new(mut inner: W) -> io::Result<Self> {
        inner.write_all(b"{\"similarity_scores\":[")?;
        Ok(Self { inner, written: 0 })
    }

    pub fn write(&mut self, c: &Candidate) -> io::Result<()> {
        let sep = if self.written > 0 { "," } else { "" };
        self.written += 1;
        write!(self.inner, "{sep}")?;
        write_scored_pair(&mut self.inner, c)
    }

    /// Closes the document and returns the underlying writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(b"]}")?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// Result of a two-party `permutations` run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permutations {
    /// `permutations[p][i]` = new position of party p's original row i (a bijection of
    /// `0..size_p`).
    pub permutations: Vec<Vec<u32>>,
    /// `mask[s] = 1` when slot s holds a matched pair in both parties; length `rows`.
    pub mask: Vec<u8>,
    /// min(size_0, size_1).
    pub rows: u64,
}

/// SplitMix64 (Steele, Lea, Flood 2014): seeds the generator below from one u64.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a permutation is drawn from. The service draws a 256-bit [`PermutationSeed::Secret`]
/// from the operating system once per run and keeps it where no token reaches (a seed anyone
/// can compute, such as one derived from the run id, would let a data provider recompute the
/// shuffle and learn which of its rows matched). `pprl link --seed N` uses a [`u64`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermutationSeed {
    /// A small seed, expanded with SplitMix64 (reproducible offline runs).
    Small(u64),
    /// 256 random bits: the generator's whole state.
    Secret([u8; 32]),
}

impl From<u64> for PermutationSeed {
    fn from(seed: u64) -> Self {
        PermutationSeed::Small(seed)
    }
}

/// xoshiro256** (Blackman, Vigna 2018): small, fast, well-distributed, and fully determined by
/// its seed, which is all a permutation needs (the seed itself should come from the OS).
struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    fn seeded(seed: PermutationSeed) -> Self {
        match seed {
            PermutationSeed::Small(seed) => {
                let mut sm = seed;
                Self { s: [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)] }
            }
            PermutationSeed::Secret(bytes) => {
                let mut s = [0u64; 4];
                for (word, chunk) in s.iter_mut().zip(bytes.chunks_exact(8)) {
                    *word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
                }
                if s == [0; 4] {
                    // The one state xoshiro cannot leave; 2^-256 likely, but never stuck.
                    return Self::seeded(PermutationSeed::Small(0));
                }
                Self { s }
            }
        }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (n > 0) by rejection, so no index is favoured.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Fisher–Yates shuffle, as `random.shuffle` does.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// The reference's `permute_mapping_data`: matched pair k goes to a random slot s < rows in both
/// parties, with `mask[s] = 1`; every other row of each party gets a random unused slot from
/// the slots no match took plus `rows..size_p`. Deterministic in `seed`.
///
/// Each group is expected to hold one record of party 0 and one of party 1 (always true of
/// two-party greedy solutions). A group without both is skipped; extra records are ignored.
/// Record indices at or beyond the declared sizes are ignored too, so the result stays a
/// bijection whatever the input.
pub fn permutations(groups: &[Group], sizes: [u64; 2], seed: impl Into<PermutationSeed>) -> Permutations {
    let pairs = groups.iter().filter_map(|group| {
        let a = group.iter().find(|(d, _)| *d == 0).map(|&(_, r)| r);
        let b = group.iter().find(|(d, _)| *d == 1).map(|&(_, r)| r);
        Some((a?, b?))
    });
    permutations_of_pairs(pairs, sizes, seed)
}

/// [`permutations`] of two-party matches `(record of party 0, record of party 1)` in the order
/// of the groups (ascending), without building the groups.
pub fn permutations_of_pairs(pairs: impl IntoIterator<Item = (u32, u32)>, sizes: [u64; 2], seed: impl Into<PermutationSeed>) -> Permutations {
    let mut rng = Xoshiro256::seeded(seed.into());
    let rows = sizes[0].min(sizes[1]);
    let mut slots: Vec<u32> = (0..rows as u32).collect();
    rng.shuffle(&mut slots);

    const UNSET: u32 = u32::MAX;
    let mut perm: [Vec<u32>; 2] = [vec![UNSET; sizes[0] as usize], vec![UNSET; sizes[1] as usize]];
    let mut mask = vec![0u8; rows as usize];
    let mut used = 0usize;
    for (a, b) in pairs {
        let (a, b) = (a as usize, b as usize);
        let fits = a < perm[0].len() && b < perm[1].len();
        if !fits || perm[0][a] != UNSET || perm[1][b] != UNSET || used >= slots.len() {
            continue;
        }
        let slot = slots[used];
        used += 1;
        perm[0][a] = slot;
        perm[1][b] = slot;
        mask[slot as usize] = 1;
    }

    let free_matched_slots = &slots[used..];
    for (p, perm) in perm.iter_mut().enumerate() {
        let mut remaining: Vec<u32> = free_matched_slots.to_vec();
        remaining.extend(rows as u32..sizes[p] as u32);
        rng.shuffle(&mut remaining);
        for slot in perm.iter_mut().filter(|s| **s == UNSET) {
            // Exactly as many free slots as unmatched rows, so this never runs dry.
            *slot = remaining.pop().unwrap_or(UNSET);
        }
    }
    let [p0, p1] = perm;
    Permutations { permutations: vec![p0, p1], mask, rows }
}

fn write_list<W: Write, T: std::fmt::Display>(w: &mut W, items: &[T]) -> io::Result<()> {
    w.write_all(b"[")?;
    for (i, x) in items.iter().enumerate() {
        let sep = if i > 0 { "," } else { "" };
        write!(w, "{sep}{x}")?;
    }
    w.write_all(b"]")
}

/// Streams what a party's receipt token gets: `{"permutation":[...],"rows":n}`. An
/// out-of-range party gets an empty permutation. Buffer `w`.
pub fn write_permutation<W: Write>(mut w: W, p: &Permutations, party: usize) -> io::Result<()> {
    let perm = p.permutations.get(party).map(Vec::as_slice).unwrap_or(&[]);
    w.write_all(b"{\"permutation\":")?;
    write_list(&mut w, perm)?;
    write!(w, ",\"rows\":{}}}", p.rows)?;
    w.flush()
}

/// Streams what the result token gets: `{"mask":[0|1,...]}`. Buffer `w`.
pub fn write_mask<W: Write>(mut w: W, p: &Permutations) -> io::Result<()> {
    w.write_all(b"{\"mask\":")?;
    write_list(&mut w, &p.mask)?;
    w.write_all(b"}")?;
    w.flush()
}

/// [`write_permutation`] into a string.
pub fn permutation_json(p: &Permutations, party: usize) -> String {
    let len = p.permutations.get(party).map_or(0, Vec::len);
    let mut out = Vec::with_capacity(32 + len * 7);
    let _ = write_permutation(&mut out, p, party);
    String::from_utf8(out).unwrap_or_default()
}

/// [`write_mask`] into a string.
pub fn mask_json(p: &Permutations) -> String {
    let mut out = Vec::with_capacity(16 + p.mask.len() * 2);
    let _ = write_mask(&mut out, p);
    String::from_utf8(out).unwrap_or_default()
}

/// The pre-1.13 `mapping` result: `{"mapping":{"<row in party 0>":"<row in party 1>",...}}`,
/// keys in ascending numeric order. Groups without one record of each party are left out.
pub fn mapping_json(groups: &[Group]) -> String {
    let mut pairs: Vec<(u32, u32)> = groups
        .iter()
        .filter_map(|g| {
            let a = g.iter().find(|(d, _)| *d == 0)?.1;
            let b = g.iter().find(|(d, _)| *d == 1)?.1;
            Some((a, b))
        })
        .collect();
    pairs.sort_unstable();
    let mut out = String::with_capacity(16 + pairs.len() * 16);
    out.push_str("{\"mapping\":{");
    for (i, (a, b)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{a}\":\"{b}\"");
    }
    out.push_str("}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (x, want) in [
            (1.0, "1.0"),
            (0.7, "0.7"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e-5, "1e-05"),
            (1.5e16, "1.5e+16"),
            (1e16, "1e+16"),
            (0.0001, "0.0001"),
            (123.456, "123.456"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.8003369839932604, "0.8003369839932604"),
        ] {
            assert_eq!(format_score(x), want, "{x:?}");
        }
    }

    #[test]
    fn shapes() {
        let groups = vec![vec![(0, 1), (1, 2)], vec![(0, 3), (1, 0)]];
        assert_eq!(groups_json(&groups), r#"{"groups":[[[0,1],[1,2]],[[0,3],[1,0]]]}"#);
        assert_eq!(mapping_json(&groups), r#"{"mapping":{"1":"2","3":"0"}}"#);
        let mut buf = Vec::new();
        let cands = [Candidate { score: 0.5, d0: 0, r0: 1, d1: 1, r1: 2 }];
        write_similarity_scores(&mut buf, cands.into_iter()).unwrap();
        assert_eq!(buf, br#"{"similarity_scores":[[[0,1],[1,2],0.5]]}"#);
        let edges = vec![vec![Candidate { score: 0.9, d0: 0, r0: 1, d1: 1, r1: 2 }], vec![]];
        let mut buf = Vec::new();
        write_scored_groups(&mut buf, &groups, &edges).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            r#"{"groups":[[[0,1],[1,2]],[[0,3],[1,0]]],"group_scores":[[[[0,1],[1,2],0.9]],[]]}"#
        );
    }
}
