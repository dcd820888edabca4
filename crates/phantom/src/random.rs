//! Deterministic randomness: seeded ChaCha streams, integer hashing, smooth value noise
//! and UID derivation. Every stream is keyed by (seed, domain, a, b), so the result of
//! one slice or component never depends on the order in which threads run.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Domains that keep the random streams of different purposes apart.
pub(crate) mod domain {
    pub const ANATOMY: u64 = 1;
    pub const VESSELS: u64 = 2;
    pub const LESIONS: u64 = 3;
    pub const NOISE: u64 = 4;
    pub const INSTANCE_ORDER: u64 = 5;
    pub const UID: u64 = 6;
}

/// Creates a ChaCha8 stream keyed by all four numbers.
pub(crate) fn stream(seed: u64, domain: u64, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_exact_mut(8).zip([seed, domain, a, b]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Mixes 64 bits with the SplitMix64 finaliser, a fast bijection.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Hashes bytes with 64-bit FNV-1a, to fingerprint a spec and to name files. Not
/// cryptographic.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Derives a UID of the form `2.25.<decimal>` (the root for UUID-derived UIDs) from a
/// number drawn from the stream keyed by `(key, a, b)`. The number has 120 random bits
/// below a set bit 120, so every UID has 37 digits after the root (42 characters).
pub(crate) fn uid(key: u64, a: u64, b: u64) -> String {
    let mut rng = stream(key, domain::UID, a, b);
    let value: u128 = (rng.gen::<u128>() >> 8) | (1u128 << 120);
    format!("2.25.{value}")
}

/// Returns smooth value noise in [0, 1) at patient position `p` (mm), with lattice cells
/// of `cell_mm`. Hashed lattice values are blended with a smoothstep along each axis.
pub(crate) fn value_noise(p: [f64; 3], cell_mm: f64, seed: u64) -> f64 {
    let scaled = [p[0] / cell_mm, p[1] / cell_mm, p[2] / cell_mm];
    let floor = [scaled[0].floor(), scaled[1].floor(), scaled[2].floor()];
    let cell = [floor[0] as i64, floor[1] as i64, floor[2] as i64];
    let weight = |t: f64| t * t * (3.0 - 2.0 * t);
    let wx = weight(scaled[0] - floor[0]);
    let wy = weight(scaled[1] - floor[1]);
    let wz = weight(scaled[2] - floor[2]);

    let corner = |dx: i64, dy: i64, dz: i64| -> f64 {
        let mut h = mix64(seed ^ (cell[0] + dx) as u64);
        h = mix64(h ^ (cell[1] + dy) as u64);
        h = mix64(h ^ (cell[2] + dz) as u64);
        (h >> 11) as f64 / (1u64 << 53) as f64
    };
    let lerp = |a: f64, b: f64, t: f64| a + (b - a) * t;

    let x00 = lerp(corner(0, 0, 0), corner(1, 0, 0), wx);
    let x10 = lerp(corner(0, 1, 0), corner(1, 1, 0), wx);
    let x01 = lerp(corner(0, 0, 1), corner(1, 0, 1), wx);
    let x11 = lerp(corner(0, 1, 1), corner(1, 1, 1), wx);
    lerp(lerp(x00, x10, wy), lerp(x01, x11, wy), wz)
}
