//! `decode` never panics and never accepts garbage: thousands of random, truncated and
//! bit-flipped inputs from a fixed-seed generator, so every run sees the same inputs.

use events::*;

use crate::crafted::{header, Raw};
use crate::samples;

/// xorshift64*: small, deterministic, good enough to spread bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Whatever `decode` returns for `bytes`, an event it accepts must be valid and re-encodable.
fn check(bytes: &[u8]) -> bool {
    match decode(bytes) {
        Ok(event) => {
            assert_eq!(validate(&event), Ok(()));
            encode(&event).expect("a decoded event encodes again");
            true
        }
        Err(_) => false,
    }
}

#[test]
fn random_bytes_are_rejected() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let len = rng.below(80);
        let bytes = rng.bytes(len);
        assert!(!check(&bytes), "random bytes decoded: {bytes:02X?}");
    }
}

#[test]
fn valid_header_with_random_datum_never_panics() {
    let mut rng = Rng(42);
    let mut accepted = 0;
    for i in 0..3000 {
        let t = EventType::ALL[i % EventType::ALL.len()];
        let len = rng.below(300);
        let mut bytes = header(t);
        bytes.extend(rng.bytes(len));
        accepted += usize::from(check(&bytes));
    }
    // Random data essentially never forms a valid record with a 36-char uuid string.
    assert_eq!(accepted, 0);
}

#[test]
fn every_truncation_of_every_sample_is_rejected() {
    for event in samples::all() {
        let bytes = encode(&event).expect("encodes");
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "{} cut to {len} of {} bytes decoded",
                event.event_type(),
                bytes.len()
            );
        }
    }
}

#[test]
fn bit_flips_never_panic() {
    let mut rng = Rng(7);
    for event in samples::all() {
        let good = encode(&event).expect("encodes");
        for _ in 0..400 {
            let mut bytes = good.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            check(&bytes);
        }
        // Random overwrite of a whole run of bytes after the header.
        for _ in 0..100 {
            let mut bytes = good.clone();
            let start = 10 + rng.below(bytes.len() - 10);
            let end = (start + 1 + rng.below(16)).min(bytes.len());
            for b in &mut bytes[start..end] {
                *b = rng.next() as u8;
            }
            check(&bytes);
        }
    }
}

#[test]
fn crafted_lengths_never_allocate_or_panic() {
    let t = EventType::OrderCreated;
    for n in [
        i64::MAX,
        i64::MIN,
        i64::from(i32::MAX),
        1 << 24,
        1 << 32,
        (1 << 24) + 1,
        -1,
    ] {
        // As the first string's length, and as the lines array's block count.
        assert!(!check(&Raw::default().long(n).record(t)));
        let lines = Raw::envelope(t).string("cust").long(n).long(0);
        assert!(!check(&lines.record(t)));
        let lines = Raw::envelope(t).string("cust").long(n).long(n);
        assert!(!check(&lines.record(t)));
    }
}
