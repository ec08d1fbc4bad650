//! The threshold table: "score ≥ t" as "AND-count ≥ needed[popcount sum]", so that the kernels
//! never divide per pair and still decide exactly as anonlink's f64 expression does (the
//! exactness argument is in the [module docs](super)).

/// `needed[s]` for "never passes".
pub(super) const NEVER: u32 = u32::MAX;

/// The exact Dice formula of anonlink's `dice_coeff`: `2·popcount(a&b) / (popcount(a) +
/// popcount(b))` as f64, and 0.0 when either side has no bit set. Slices of different lengths
/// are compared over the shorter length (the engine never does that; encodings of a project
/// share one size).
pub fn dice(a: &[u8], b: &[u8]) -> f64 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let pa: u32 = a.iter().map(|x| x.count_ones()).sum();
    let pb: u32 = b.iter().map(|x| x.count_ones()).sum();
    if pa == 0 || pb == 0 {
        return 0.0;
    }
    let c: u32 = a.iter().zip(b).map(|(x, y)| (x & y).count_ones()).sum();
    score(c, pa + pb)
}

/// anonlink's score expression, `(2 * uv_popc) / (double)(u_popc + v_popc)`, with the 0/0 case
/// (two empty encodings) defined as 0.0 like its `dice_coeff`.
#[inline]
pub fn score(and_count: u32, popcount_sum: u32) -> f64 {
    if popcount_sum == 0 {
        return 0.0;
    }
    (2 * u64::from(and_count)) as f64 / f64::from(popcount_sum)
}

/// Per-threshold tables that replace every per-pair division (see the module doc).
#[derive(Clone, Debug)]
pub struct ThresholdTable {
    threshold: f64,
    bits: u32,
    /// `needed[s]`: least AND-count whose score at popcount sum `s` is `>= threshold`.
    pub(super) needed: Vec<u32>,
    /// anonlink's `calculate_max_difference(pa, t)` per popcount `pa` of the first side.
    max_delta: Vec<u32>,
    /// `floor[s]`: the least `needed[s']` over all `s' ≥ s`. `needed` is not monotone (an odd
    /// sum can be [`NEVER`] where the next even one is not), `floor` is, so it bounds a whole
    /// group of pairs whose popcount sums are at least `s` from below.
    pub(super) floor: Vec<u32>,
}

impl ThresholdTable {
    /// Tables for encodings of `encoding_size` bytes.
    pub fn new(threshold: f64, encoding_size: usize) -> Self {
        let bits = (encoding_size * 8) as u32;
        let needed: Vec<u32> = (0..=2 * bits).map(|s| least_passing_and_count(threshold, s)).collect();
        let max_delta = (0..=bits)
            .map(|pa| {
                if threshold > 0.0 {
                    // C: uint32 * double → double, truncated back to uint32 (saturating here,
                    // where C would be undefined; only thresholds near 0 get there).
                    (f64::from(2 * pa) * (1.0 / threshold - 1.0)) as u32
                } else {
                    bits
                }
            })
            .collect();
        let mut floor = needed.clone();
        for s in (0..floor.len().saturating_sub(1)).rev() {
            floor[s] = floor[s].min(floor[s + 1]);
        }
        ThresholdTable { threshold, bits, needed, max_delta, floor }
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Whether a pair with these popcounts can pass at all (exact bound plus anonlink's filter).
    #[inline(always)]
    pub(super) fn admissible(&self, pa: u32, pb: u32) -> Option<u32> {
        debug_assert!(pa <= self.bits && pb <= self.bits);
        // SAFETY: popcounts come from validated `Entries` (equal to the real popcount of an
        // encoding of `bits` bits), so pa, pb ≤ bits and the tables are long enough.
        let (needed, delta) =
            unsafe { (*self.needed.get_unchecked((pa + pb) as usize), *self.max_delta.get_unchecked(pa as usize)) };
        (pa.abs_diff(pb) <= delta && pa.min(pb) >= needed).then_some(needed)
    }

    /// Whether the pair with these counts is kept (the plain, table-free definition).
    pub fn keeps(&self, pa: u32, pb: u32, and_count: u32) -> bool {
        if pa == 0 && self.threshold > 0.0 {
            return false;
        }
        let delta_ok = self.threshold <= 0.0 || pa.abs_diff(pb) <= self.max_delta[pa as usize];
        delta_ok && score(and_count, pa + pb) >= self.threshold
    }
}

/// The least `c ≤ s/2` with `score(c, s) >= t`, evaluated with the same f64 expression, or
/// [`NEVER`]. `s/2` bounds `c` because `c ≤ min(pa, pb) ≤ s/2`.
pub(super) fn least_passing_and_count(t: f64, s: u32) -> u32 {
    let passes = |c: u32| score(c, s) >= t;
    let max_c = s / 2;
    if !passes(max_c) {
        return NEVER;
    }
    // Start near the answer (ceil(t·s/2)), then step to the exact boundary.
    let guess = if t.is_finite() && t > 0.0 { ((t * f64::from(s)) / 2.0).ceil().min(f64::from(max_c)) as u32 } else { 0 };
    let mut c = guess;
    while c > 0 && passes(c - 1) {
        c -= 1;
    }
    while !passes(c) {
        c += 1;
    }
    c
}
