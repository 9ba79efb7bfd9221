//! Replays the fuzz seeds (`fuzz/seeds/`) through the fuzz harnesses, and
//! a few thousand deterministic mutations of them, so the properties the
//! fuzz targets check also run in every plain `cargo test` (the real fuzz
//! runs need cargo-fuzz and nightly; see the README).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/harness.rs"]
mod harness;

use std::path::PathBuf;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A seed with a few bytes flipped, inserted, removed or cut.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    const INTERESTING: &[u8] = b"{}[]\",:0-9eE.\\un tf\x00\xff";
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(4) {
            0 if at < out.len() => out[at] = INTERESTING[rng.below(INTERESTING.len())],
            1 => out.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 if at < out.len() => {
                out.remove(at);
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn replay(target: &str, check: fn(&[u8]), mutations: usize) {
    let seeds = seeds(target);
    for seed in &seeds {
        check(seed);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..mutations {
        let seed = &seeds[rng.below(seeds.len())];
        check(&mutate(&mut rng, seed));
    }
}

#[test]
fn request_decoding_seeds_and_mutations() {
    replay("request_decoding", harness::request_decoding, 5_000);
}

#[test]
fn cursor_codec_seeds_and_mutations() {
    replay("cursor_codec", harness::cursor_codec, 5_000);
}
