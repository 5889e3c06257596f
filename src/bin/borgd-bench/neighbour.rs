//! `neighbour KIND`: a program that keeps the other CPU busy in one chosen way until it is
//! killed, so that a replay can measure what a neighbour of that kind costs a server.
//!
//! Why: in `e2e` the real client runs on this machine, beside the server, and streams its data
//! set through memory while the server works; a backup host's clients run elsewhere. A paced
//! replay with a neighbour (`scripts/beside.sh`) separates the kinds of company: CPU only
//! (`spin`), memory traffic that stays in the other core's own cache (`stream:0.5`), memory traffic
//! through the shared cache and the memory bus (`stream:64`), the same with stores that bypass
//! the caches (`stream-nt:64`). docs/BENCHMARKS.md, "The client beside the server", has the figures.

use std::hint::black_box;

use super::Res;

/// Bytes a `stream` neighbour copies at a time: below glibc's threshold for non-temporal
/// copies, so `stream` stores go through the caches as the client's copies do.
const PIECE: usize = 256 * 1024;

/// What a neighbour does, parsed from `spin`, `stream:MIB` or `stream-nt:MIB`.
#[derive(Debug, PartialEq)]
enum Kind {
    /// Integer arithmetic on 4 KiB: the other CPU busy, next to no memory traffic.
    Spin,
    /// Copies between two buffers of this many bytes each, back and forth; `true`: with
    /// non-temporal stores.
    Stream(usize, bool),
}

fn parse(kind: &str) -> Res<Kind> {
    let bytes = |mib: &str| -> Res<usize> {
        let m: f64 = mib.parse().map_err(|e| format!("neighbour {kind}: {e}"))?;
        if !(m > 0.0 && m <= 65536.0) {
            return Err(format!("neighbour {kind}: MIB must be above 0 and at most 65536"));
        }
        // whole 16-byte units, at least one
        Ok((((m * 1048576.0) as usize) / 16).max(1) * 16)
    };
    match kind.split_once(':') {
        None if kind == "spin" => Ok(Kind::Spin),
        Some(("stream", mib)) => Ok(Kind::Stream(bytes(mib)?, false)),
        Some(("stream-nt", mib)) => Ok(Kind::Stream(bytes(mib)?, true)),
        _ => Err(format!("neighbour {kind:?}: give spin, stream:MIB or stream-nt:MIB")),
    }
}

/// Runs the neighbour; returns only on bad arguments.
pub fn main(args: &[String]) -> Res<i32> {
    let [kind] = args else { return Err("usage: borgd-bench neighbour spin | stream:MIB | stream-nt:MIB".into()) };
    match parse(kind)? {
        Kind::Spin => spin(),
        Kind::Stream(bytes, non_temporal) => stream(bytes, non_temporal),
    }
}

fn spin() -> ! {
    let mut state = [1u64; 512];
    for i in 0u64.. {
        let x = state[(i & 511) as usize].wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i);
        state[(i.wrapping_mul(7) & 511) as usize] = x ^ (x >> 29);
        black_box(&state);
    }
    unreachable!("the loop above runs until the process is killed")
}

fn stream(bytes: usize, non_temporal: bool) -> Res<i32> {
    // u128: 16-byte aligned, as non-temporal stores need
    let mut a = vec![1u128; bytes / 16];
    let mut b = vec![2u128; bytes / 16];
    let piece = (PIECE / 16).min(a.len());
    loop {
        if non_temporal {
            copy_non_temporal(&a, &mut b)?;
        } else {
            for (d, s) in b.chunks_mut(piece).zip(a.chunks(piece)) {
                d.copy_from_slice(s);
            }
        }
        a[0] = a[0].wrapping_add(1);
        std::mem::swap(&mut a, &mut b);
        black_box(&b);
    }
}

#[cfg(target_arch = "x86_64")]
fn copy_non_temporal(src: &[u128], dst: &mut [u128]) -> Res<()> {
    use std::arch::x86_64::{__m128i, _mm_load_si128, _mm_sfence, _mm_stream_si128};
    for (d, s) in dst.iter_mut().zip(src) {
        // SAFETY: SSE2 is part of x86_64; both pointers are valid and 16-byte aligned (u128).
        unsafe { _mm_stream_si128(d as *mut u128 as *mut __m128i, _mm_load_si128(s as *const u128 as *const __m128i)) };
    }
    // SAFETY: as above.
    unsafe { _mm_sfence() };
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn copy_non_temporal(_: &[u128], _: &mut [u128]) -> Res<()> {
    Err("stream-nt: non-temporal stores are only written for x86_64".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_nonsense_is_refused() {
        assert_eq!(parse("spin").unwrap(), Kind::Spin);
        assert_eq!(parse("stream:64").unwrap(), Kind::Stream(64 << 20, false));
        assert_eq!(parse("stream:0.5").unwrap(), Kind::Stream(512 << 10, false));
        assert_eq!(parse("stream-nt:1").unwrap(), Kind::Stream(1 << 20, true));
        for bad in ["", "spin:1", "stream", "stream:", "stream:0", "stream:-1", "stream:x", "walk:1", "stream:NaN"] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
