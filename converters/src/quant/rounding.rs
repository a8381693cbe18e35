//! The float → integer conversions ggml's quantizers use, reproduced bit for bit.
//!
//! ggml mixes three different roundings, and a quantizer is only byte-identical if each call
//! site uses the same one as the C code:
//! * [`nearest_int`] (round half to even, via a float-add bit trick) in all K-quant code;
//! * C's truncating cast `(int8_t)f` / `(uint8_t)f` in Q4_0, Q4_1, Q5_0, Q5_1
//!   ([`trunc_to_i32`], then the caller narrows like C does);
//! * `roundf` (half away from zero, Rust's `f32::round`) in Q8_0.

/// ggml's `nearest_int`: add 1.5·2²³ so that the FPU's round-to-nearest-even puts the integer
/// in the low mantissa bits, then read them back.
///
/// For |f| ≤ 4194303 this equals `f.round_ties_even() as i32`. ggml only `assert`s that range
/// and release builds compile the assert out, so outside it (huge values, inf, NaN) ggml keeps
/// whatever the bit pattern gives. Doing the same trick here keeps us identical there too and
/// can never panic.
#[inline]
pub fn nearest_int(f: f32) -> i32 {
    let bits = (f + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// C's `(int)f` as x86-64 executes it (`cvttss2si`): truncation toward zero, and the "integer
/// indefinite" value `i32::MIN` for NaN and out-of-range inputs.
///
/// C leaves out-of-range conversions undefined; on x86-64 gcc narrows `(int8_t)f` by converting
/// to a 32-bit int first and keeping the low byte, which is what callers do with `as i8` / `as u8`.
/// Rust's own `as i32` saturates instead, so it would differ on those inputs (which do occur:
/// a subnormal block max makes `1/d` infinite).
#[inline]
pub fn trunc_to_i32(f: f32) -> i32 {
    // 2^31 is exactly representable; every f32 in [-2^31, 2^31) truncates into i32's range.
    if (-2_147_483_648.0f32..2_147_483_648.0f32).contains(&f) {
        f as i32
    } else {
        i32::MIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_is_round_half_even_in_range() {
        let cases: [(f32, i32); 12] = [
            (0.0, 0),
            (-0.0, 0),
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.5, -2),
            (0.49999997, 0),
            (7.6, 8),
            (-7.6, -8),
            (4_194_303.0, 4_194_303),
        ];
        for (f, want) in cases {
            assert_eq!(nearest_int(f), want, "nearest_int({f})");
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..100_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let f = (x as f32 / u32::MAX as f32 - 0.5) * 8_000_000.0;
            assert_eq!(nearest_int(f), f.round_ties_even() as i32, "{f}");
        }
    }

    #[test]
    fn nearest_int_out_of_range_does_not_panic() {
        for f in [1e30f32, -1e30, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, 5e6] {
            let _ = nearest_int(f);
        }
        assert_eq!(nearest_int(f32::NAN), 0);
    }

    #[test]
    fn trunc_matches_c_in_range_and_x86_outside() {
        assert_eq!(trunc_to_i32(16.9), 16);
        assert_eq!(trunc_to_i32(-0.9), 0);
        assert_eq!(trunc_to_i32(-8.5), -8);
        assert_eq!(trunc_to_i32(f32::INFINITY), i32::MIN);
        assert_eq!(trunc_to_i32(f32::NAN), i32::MIN);
        assert_eq!(trunc_to_i32(3e9), i32::MIN);
        assert_eq!(trunc_to_i32(-2_147_483_648.0), i32::MIN);
        assert_eq!(trunc_to_i32(2_147_483_520.0), 2_147_483_520);
    }
}
