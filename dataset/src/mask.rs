//! The loss masks of upstream `dataset/lm_dataset.py`, and the X/Y shift.

/// Upstream's `_generate_loss_mask` (`SFTDataset` and `DPODataset`), quirks included:
///
/// * scanning left to right, wherever `bos_id` (`<|im_start|>assistant`) starts at `i`, the
///   answer starts at `start = i + len(bos_id)`;
/// * `end` is the first position `>= start` where `eos_id` starts, or `len(ids)` when there is
///   none (a truncated answer then runs to the end, over any padding);
/// * positions `start + 1 .. min(end + len(eos_id) + 1, max_length)` get 1. So the first
///   answer token (MiniMind: the `\n` after `assistant`) is *not* masked in, while `eos_id`
///   and the one token after it (MiniMind: the `\n` after `<|im_end|>`) are;
/// * the scan then jumps to `end + len(eos_id)` (or to the end when no `eos_id` was found),
///   so a `bos_id` inside the masked span is not looked for again, except one that starts
///   right after `eos_id` (the token after `eos_id` is masked *and* rescanned).
///
/// Upstream always calls it with `len(ids) == max_length` (the ids are padded first). Here
/// the upper bound is also clamped to `len(ids)`, where Python would raise `IndexError`.
///
/// # Panics
/// When `bos_id` or `eos_id` is empty (upstream would loop forever); [`AssistantMarkers`]
/// rules that out.
///
/// [`AssistantMarkers`]: crate::AssistantMarkers
pub fn assistant_loss_mask(ids: &[u32], bos_id: &[u32], eos_id: &[u32], max_length: usize) -> Vec<u8> {
    assert!(!bos_id.is_empty() && !eos_id.is_empty(), "assistant markers must not be empty");
    let n = ids.len();
    let mut mask = vec![0u8; n];
    let mut i = 0;
    while i < n {
        if ids[i..].starts_with(bos_id) {
            let start = i + bos_id.len();
            let mut end = start;
            while end < n && !ids[end..].starts_with(eos_id) {
                end += 1;
            }
            let hi = (end + eos_id.len() + 1).min(max_length).min(n);
            for m in mask.iter_mut().take(hi).skip(start + 1) {
                *m = 1;
            }
            i = if end < n { end + eos_id.len() } else { n };
        } else {
            i += 1;
        }
    }
    mask
}

/// Upstream `PretrainDataset`'s mask: 1 wherever the id is not the pad id (a real
/// `<|endoftext|>` in the text is therefore masked out too).
pub fn non_pad_mask(ids: &[u32], pad_id: u32) -> Vec<u8> {
    ids.iter().map(|&id| u8::from(id != pad_id)).collect()
}

/// Pads `ids` with `pad_id` up to `len` (right padding, as MiniMind's tokenizer does).
pub fn pad_to(ids: &mut Vec<u32>, len: usize, pad_id: u32) {
    if ids.len() < len {
        ids.resize(len, pad_id);
    }
}

/// One training row: `X = ids[:-1]`, `Y = ids[1:]`, `loss_mask = mask[1:]` (the mask of the
/// position each `Y` token is predicted at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmExample {
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    pub loss_mask: Vec<u8>,
}

impl LmExample {
    /// Shifts a full sequence and its mask (both of the same length, at least 1).
    pub fn from_ids(ids: &[u32], mask: &[u8]) -> Self {
        assert_eq!(ids.len(), mask.len(), "ids and mask differ in length");
        assert!(!ids.is_empty(), "cannot shift an empty sequence");
        Self { x: ids[..ids.len() - 1].to_vec(), y: ids[1..].to_vec(), loss_mask: mask[1..].to_vec() }
    }

    pub fn len(&self) -> usize {
        self.x.len()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    /// Whether any position carries loss.
    pub fn has_loss_tokens(&self) -> bool {
        self.loss_mask.iter().any(|&m| m != 0)
    }

    /// How many positions carry loss.
    pub fn mask_count(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOS: &[u32] = &[1, 50, 51];
    const EOS: &[u32] = &[2];

    fn mask(ids: &[u32], max_length: usize) -> Vec<u8> {
        assistant_loss_mask(ids, BOS, EOS, max_length)
    }

    #[test]
    fn one_turn() {
        // 0: sys, 1..=3: bos, 4: "\n", 5..=6 answer, 7: eos, 8: "\n", 9: pad
        let ids = [9, 1, 50, 51, 10, 20, 21, 2, 10, 0];
        //                     start=4 → mask 5..min(7+1+1, 10)=9 → 5,6,7,8
        assert_eq!(mask(&ids, 10), vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 0]);
    }

    #[test]
    fn two_turns_and_user_bos_ignored() {
        // the user turn's <|im_start|>user does not match bos (wrong second token)
        let ids = [1, 60, 10, 7, 2, 10, 1, 50, 51, 10, 30, 2, 10, 1, 60, 10, 8, 2, 10, 1, 50, 51, 10, 31, 32, 2, 10, 0, 0];
        let m = mask(&ids, ids.len());
        let on: Vec<usize> = (0..ids.len()).filter(|&i| m[i] == 1).collect();
        assert_eq!(on, vec![10, 11, 12, 23, 24, 25, 26]);
    }

    #[test]
    fn truncated_answer_runs_to_end() {
        // no eos after the answer: end = len → mask runs to max_length (over everything)
        let ids = [1, 50, 51, 10, 5, 6, 7];
        assert_eq!(mask(&ids, 7), vec![0, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn truncated_answer_padded_masks_padding() {
        // upstream pads after truncating at max_length, so this only happens when the eos is
        // missing from the data; the mask then covers the padding too
        let ids = [1, 50, 51, 10, 5, 0, 0, 0];
        assert_eq!(mask(&ids, 8), vec![0, 0, 0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn eos_at_last_position_capped_by_max_length() {
        // eos at index 6 = last: range 5..min(6+1+1, 7) = 5..7
        let ids = [1, 50, 51, 10, 5, 6, 2];
        assert_eq!(mask(&ids, 7), vec![0, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn max_length_smaller_than_len_caps() {
        let ids = [1, 50, 51, 10, 5, 6, 2, 10, 0];
        assert_eq!(mask(&ids, 6), vec![0, 0, 0, 0, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn bos_cut_by_truncation_is_not_matched() {
        // only [1, 50] of the marker fits: nothing is masked
        let ids = [9, 9, 1, 50];
        assert_eq!(mask(&ids, 4), vec![0; 4]);
        // marker fits but nothing after it: start == len → empty range
        let ids = [9, 1, 50, 51];
        assert_eq!(mask(&ids, 4), vec![0; 4]);
        // marker then only "\n": start+1 == len → empty range
        let ids = [1, 50, 51, 10];
        assert_eq!(mask(&ids, 4), vec![0; 4]);
    }

    #[test]
    fn empty_answer_masks_token_after_eos() {
        // eos right at start: end == start, range start+1 .. start+2 covers the token after eos,
        // not the eos itself (which sits at `start`)
        let ids = [1, 50, 51, 2, 10, 0];
        assert_eq!(mask(&ids, 6), vec![0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn jump_rule_rescans_token_after_eos() {
        // eos immediately followed by a new bos: the bos's first token is masked (it is the
        // "one after eos") and still starts the next span
        let ids = [1, 50, 51, 10, 5, 2, 1, 50, 51, 10, 6, 2, 10];
        let m = mask(&ids, ids.len());
        assert_eq!(m, vec![0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn bos_inside_answer_is_skipped() {
        // a bos inside the answer (before the eos) does not start a new span
        let ids = [1, 50, 51, 10, 1, 50, 51, 7, 2, 10, 0];
        let m = mask(&ids, ids.len());
        assert_eq!(m, vec![0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0]);
    }

    #[test]
    fn multi_token_eos() {
        let eos = [2, 3];
        let ids = [1, 50, 51, 10, 5, 2, 3, 10, 0];
        // end = 5, range 4..min(5+2+1, 9) = 4..8
        assert_eq!(assistant_loss_mask(&ids, BOS, &eos, 9), vec![0, 0, 0, 0, 1, 1, 1, 1, 0]);
        // a half eos (2 without 3) is not an end
        let ids = [1, 50, 51, 10, 2, 5, 2, 3, 0];
        assert_eq!(assistant_loss_mask(&ids, BOS, &eos, 9), vec![0, 0, 0, 0, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn shift() {
        let ex = LmExample::from_ids(&[1, 2, 3, 0], &[1, 1, 1, 0]);
        assert_eq!(ex.x, vec![1, 2, 3]);
        assert_eq!(ex.y, vec![2, 3, 0]);
        assert_eq!(ex.loss_mask, vec![1, 1, 0]);
        assert_eq!(non_pad_mask(&[5, 0, 7, 0], 0), vec![1, 0, 1, 0]);
    }
}
