//! The deterministic generator the random-walk unit tests share (test builds only): a
//! xorshift64 stream, so a failing walk replays exactly from its seed.

/// `rnd(m)`: the next value of the xorshift64 stream from `seed` (nonzero), modulo `m`.
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    }
}
