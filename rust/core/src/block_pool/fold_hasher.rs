//! The hasher of the crate's maps keyed by values that are already hashes or ids.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Map hasher for keys that are already hashes. One folded 64x64->128 multiply mixes
/// every input bit into the high bits hashbrown uses for its control bytes, so even
/// structured keys (small integers in tests) spread well; SipHash would cost ~10x more.
#[derive(Default)]
pub struct FoldHasher(u64);

const FOLD_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn fold_mix(x: u64) -> u64 {
    let m = (x as u128).wrapping_mul(FOLD_MUL as u128);
    (m as u64) ^ ((m >> 64) as u64)
}

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 = fold_mix(self.0 ^ u64::from_le_bytes(buf));
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = fold_mix(self.0 ^ (v as u64) ^ ((v >> 64) as u64).rotate_left(32));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = fold_mix(self.0 ^ v);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_i32(&mut self, v: i32) {
        self.write_u64(v as u32 as u64);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FoldHasher>>;
