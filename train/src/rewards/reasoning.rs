//! Upstream's rule reward for reasoning models (`calculate_rewards` with `--reasoning 1` in
//! train_grpo.py / train_spo.py / train_ppo.py @5959396): 0.5 when the whole reply has the
//! `<think>…</think><answer>…</answer>` layout, plus 0.25 for each of the four tags that
//! occurs exactly once. At most 1.5.
//!
//! Upstream's layout test is `re.match(p, reply, re.S)` with
//! `p = ^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$` or the same with `\n\n` before
//! `<answer>`. With `re.S` the `.*?` take anything (newlines and tags too), so a reply matches
//! when it starts with `<think>\n`, ends with `\n</answer>`, and what lies between holds one of
//! the two separators. Python's `$` also matches before one final newline, so a single
//! trailing `\n` is allowed. The reply is the completion as upstream decodes it
//! (`skip_special_tokens=True`: no `<|im_end|>`).

const OPEN: &str = "<think>\n";
const CLOSE: &str = "\n</answer>";
const SEPARATORS: [&str; 2] = ["\n</think>\n<answer>\n", "\n</think>\n\n<answer>\n"];
const TAGS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];

/// Whether upstream's layout regexes match `reply`.
pub fn format_matches(reply: &str) -> bool {
    [Some(reply), reply.strip_suffix('\n')].into_iter().flatten().any(|text| {
        let Some(middle) = text.strip_prefix(OPEN).and_then(|rest| rest.strip_suffix(CLOSE)) else {
            return false;
        };
        SEPARATORS.iter().any(|sep| middle.contains(sep))
    })
}

/// 0.5 for the layout, else 0.
pub fn format_reward(reply: &str) -> f32 {
    if format_matches(reply) {
        0.5
    } else {
        0.0
    }
}

/// 0.25 per tag occurring exactly once (Python's `str.count`: none of the tags can overlap
/// itself, so non-overlapping and plain counts agree).
pub fn tag_reward(reply: &str) -> f32 {
    TAGS.iter().filter(|tag| reply.matches(*tag).count() == 1).count() as f32 * 0.25
}

/// Upstream's whole reasoning rule reward: layout plus tags, in [0, 1.5].
pub fn reasoning_reward(reply: &str) -> f32 {
    format_reward(reply) + tag_reward(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (reply, layout matches, reward): the expectations come from upstream's Python
    /// (`re.match` with `re.S`, `str.count`), run on the same strings.
    const CASES: &[(&str, bool, f32)] = &[
        // The two layouts.
        ("<think>\nstep\n</think>\n<answer>\n42\n</answer>", true, 1.5),
        ("<think>\nstep\n</think>\n\n<answer>\n42\n</answer>", true, 1.5),
        // Empty think / answer bodies still need their own newline on each side.
        ("<think>\n\n</think>\n<answer>\n\n</answer>", true, 1.5),
        ("<think>\n</think>\n<answer>\n42\n</answer>", false, 1.0),
        ("<think>\nstep\n</think>\n<answer>\n</answer>", false, 1.0),
        // Python's `$`: one trailing newline passes, two do not.
        ("<think>\nstep\n</think>\n<answer>\n42\n</answer>\n", true, 1.5),
        ("<think>\nstep\n</think>\n<answer>\n42\n</answer>\n\n", false, 1.0),
        // Missing newlines around the tags.
        ("<think>step</think><answer>42</answer>", false, 1.0),
        ("<think>\nstep</think>\n<answer>\n42\n</answer>", false, 1.0),
        ("<think>\nstep\n</think><answer>\n42\n</answer>", false, 1.0),
        ("<think>\nstep\n</think>\n<answer>42\n</answer>", false, 1.0),
        // Three newlines between the blocks match neither layout.
        ("<think>\nstep\n</think>\n\n\n<answer>\n42\n</answer>", false, 1.0),
        // Text before or after.
        ("Sure! <think>\nstep\n</think>\n<answer>\n42\n</answer>", false, 1.0),
        ("<think>\nstep\n</think>\n<answer>\n42\n</answer> done", false, 1.0),
        (" <think>\nstep\n</think>\n<answer>\n42\n</answer>", false, 1.0),
        // Multi-line bodies (re.S).
        ("<think>\na\nb\n\nc\n</think>\n<answer>\nx\ny\n</answer>", true, 1.5),
        // Nested / repeated tags: the layout still matches (`.*?` takes tags), the counts do not.
        ("<think>\n<think>\nstep\n</think>\n<answer>\n42\n</answer>", true, 1.25),
        ("<think>\nstep\n</think>\n<answer>\n<answer>\n42\n</answer>\n</answer>", true, 1.0),
        ("<think>\na\n</think>\n<answer>\nb\n</answer>\n</think>\n<answer>\nc\n</answer>", true, 0.75),
        // Only some tags.
        ("<think>\nstep\n</think>\n42", false, 0.5),
        ("<answer>\n42\n</answer>", false, 0.5),
        ("<think>", false, 0.25),
        ("42", false, 0.0),
        ("", false, 0.0),
        // Tags in the wrong order: counts only.
        ("<answer>\n42\n</answer>\n<think>\nstep\n</think>", false, 1.0),
        // CJK bodies (multi-byte characters next to the tags).
        ("<think>\n先算十位，再算个位\n</think>\n<answer>\n四十二\n</answer>", true, 1.5),
        ("<think>\n思考\n</think>\n\n<answer>\n答案：四十二。\n</answer>\n", true, 1.5),
        ("<think>思考</think>\n<answer>\n答案\n</answer>", false, 1.0),
        // Windows line ends are not `\n`.
        ("<think>\r\nstep\r\n</think>\r\n<answer>\r\n42\r\n</answer>", false, 1.0),
        // Look-alike tags do not count.
        ("<Think>\nstep\n</Think>\n<answer>\n42\n</answer>", false, 0.5),
        ("<think >\nstep\n</think>\n<answer>\n42\n</answer>", false, 0.75),
    ];

    #[test]
    fn upstream_cases() {
        for &(reply, matches, reward) in CASES {
            assert_eq!(format_matches(reply), matches, "layout of {reply:?}");
            assert_eq!(reasoning_reward(reply), reward, "reward of {reply:?}");
        }
    }
}
