//! `length`: DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13), which keeps a
//! policy from learning to ramble into the sampling limit. With `L_max` = `max_new_tokens`
//! and a buffer `L_cache` = `L_max / 4` (at least one token), a reply of `len` tokens (its EOS
//! counted, as in upstream's completion mask) gets
//! `0` when `len <= L_max - L_cache`, then falls linearly to `-1` at `L_max`:
//! `(L_max - L_cache - len) / L_cache`. A reply cut off by the limit (no EOS) is `L_max` long
//! and gets `-1`.

/// The penalty, in [-1, 0].
pub fn length_penalty(len: usize, max_new_tokens: usize) -> f32 {
    let cache = (max_new_tokens / 4).max(1);
    let free = max_new_tokens.saturating_sub(cache);
    if len <= free {
        return 0.0;
    }
    -(((len - free) as f32) / cache as f32).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_then_linear_then_capped() {
        // L_max 100, L_cache 25: free up to 75 tokens.
        assert_eq!(length_penalty(0, 100), 0.0);
        assert_eq!(length_penalty(75, 100), 0.0);
        assert_eq!(length_penalty(76, 100), -0.04);
        assert_eq!(length_penalty(80, 100), -0.2);
        assert_eq!(length_penalty(100, 100), -1.0);
        // Longer than the limit cannot come from sampling; still capped.
        assert_eq!(length_penalty(500, 100), -1.0);
    }

    #[test]
    fn tiny_limits() {
        // L_max 3: L_cache 1, free up to 2.
        assert_eq!(length_penalty(2, 3), 0.0);
        assert_eq!(length_penalty(3, 3), -1.0);
        // L_max 1: L_cache 1, no free tokens.
        assert_eq!(length_penalty(1, 1), -1.0);
        assert_eq!(length_penalty(0, 0), 0.0);
    }
}
