//! Stable-toolchain fuzzing: mutates the seed queries with a seeded PRNG for
//! a bounded time and runs each through the oracle; exits non-zero, printing
//! the input, on the first panic. Usage: stable_loop [SECONDS] [SEED].
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

/// xorshift64*: small, deterministic for a given seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const PIECES: &[&str] = &[
    " eq ", " ne ", " gt ", " and ", " or ", "not ", "(", ")", "'", "''", ",", ";", "/", "$", "=", "&", "%", "%2", "+",
    "null", "true", "-", "9223372036854775807", "1e309", "2024-01-01T", "contains(", "in (", "$expand=", "$filter=",
    "$select=", "$orderby=", "$top=", "fleet/", "devices/", "owner/", "is_online", "temp", "config", "secret", "any(",
    "日本", "\u{0}", "((((((((", "))))))))", "not not not ", " desc", "$count=true", "%C3%BC", "%FF",
];

fn mutate(rng: &mut Rng, s: &mut Vec<u8>, seeds: &[&str]) {
    for _ in 0..=rng.below(4) {
        let pos = rng.below(s.len() + 1);
        match rng.below(6) {
            0 if !s.is_empty() => {
                let end = (pos + 1 + rng.below(8)).min(s.len());
                s.drain(pos.min(s.len())..end);
            }
            1 => {
                let p = PIECES[rng.below(PIECES.len())].as_bytes();
                s.splice(pos..pos, p.iter().copied());
            }
            2 if !s.is_empty() => {
                let i = pos.min(s.len() - 1);
                s[i] = (rng.next() & 0xff) as u8;
            }
            3 => {
                let other = seeds[rng.below(seeds.len())].as_bytes();
                let from = rng.below(other.len());
                let to = (from + rng.below(other.len() - from + 1)).min(other.len());
                s.splice(pos..pos, other[from..to].iter().copied());
            }
            4 if !s.is_empty() => {
                // Duplicate a slice (grows nesting and lists).
                let from = rng.below(s.len());
                let to = (from + 1 + rng.below(16)).min(s.len());
                let chunk: Vec<u8> = s[from..to].to_vec();
                s.splice(pos..pos, chunk);
            }
            _ => s.push(b"()',;/= "[rng.below(8)]),
        }
    }
    s.truncate(4096);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0x5EED_0DA7A) | 1;
    let seeds: Vec<&str> = resin_odata_fuzz::SEEDS.lines().filter(|l| !l.is_empty()).collect();
    let db = resin_odata_fuzz::Db::new();
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs: u64 = 0;
    for s in &seeds {
        db.check(s);
    }
    while Instant::now() < deadline {
        let mut input = seeds[rng.below(seeds.len())].as_bytes().to_vec();
        for _ in 0..=rng.below(3) {
            mutate(&mut rng, &mut input, &seeds);
            let text = String::from_utf8_lossy(&input).into_owned();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check(&text)));
            runs += 1;
            if outcome.is_err() {
                eprintln!("stable_loop: panic after {runs} runs (seed {seed}) on input {text:?}");
                std::process::exit(1);
            }
        }
    }
    println!("stable_loop: {runs} inputs in {secs} s (seed {seed}), no panic");
}
