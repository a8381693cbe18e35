//! The tensor table: every kind of tensor a MiniMind checkpoint holds, its shape rule, and its
//! name and transform in each layout (gguf-py's `MODEL_TENSOR` / `TENSOR_NAMES` are the model).
//! Readers, writers, validators and the model builder take names from here, so a new kind of
//! tensor (MiniMind-3's q/k norms, a value head) is one row plus the code that computes with it.
//!
//! Canonical names are upstream's `state_dict` names, which HF MiniMind and HF Llama
//! safetensors share for dense models. The tied `lm_head.weight` is left out unless the
//! checkpoint really has a separate output matrix.

use crate::config::MiniMindConfig;

/// What a tensor is, whatever a format calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    TokenEmbd,
    AttnQ,
    AttnK,
    AttnV,
    /// Qwen2-MoE only: zero q/k/v biases (vLLM's Qwen2-MoE always has them).
    AttnQBias,
    AttnKBias,
    AttnVBias,
    AttnOut,
    AttnNorm,
    FfnNorm,
    FfnGate,
    FfnDown,
    FfnUp,
    ExpGate,
    ExpDown,
    ExpUp,
    MoeRouter,
    ShexpGate,
    ShexpDown,
    ShexpUp,
    /// Qwen2-MoE only: the shared expert's gate, zero (sigmoid(0) = 0.5, see `qwen2_moe`).
    ShexpGateInp,
    OutputNorm,
    Output,
}

/// Where a kind repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Once per model.
    Model,
    /// Once per layer (`{l}`).
    Layer,
    /// Per layer and routed expert (`{l}`, `{e}`).
    Expert,
    /// Per layer and shared expert (`{l}`, `{e}`).
    SharedExpert,
}

/// Which checkpoints (or layouts) have a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Present {
    Always,
    Dense,
    Moe,
    /// Only when the output head is not tied to the embedding.
    Untied,
    /// Not in a MiniMind checkpoint: added by the Qwen2-MoE layout.
    Qwen2MoeOnly,
}

/// One axis of a shape, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Vocab,
    Hidden,
    /// `num_attention_heads · head_dim`
    Query,
    /// `num_key_value_heads · head_dim`
    KeyValue,
    Ffn,
    Experts,
    One,
}

/// How llama.cpp's tensor is made from the canonical ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufRule {
    Copy,
    /// Rows interleaved per head for `llama`'s rope (Q with the query heads, K with the KV heads).
    PermuteRows(Dim),
    /// The routed experts stacked into [E, out, in].
    StackExperts,
    /// The shared experts joined along the FFN axis: rows (gate, up) or columns (down).
    ConcatRows,
    ConcatCols,
}

/// How the Qwen2-MoE layout holds a kind (the rest keep their canonical name and values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QwenRule {
    /// Under another name.
    Rename(&'static str),
    /// Under another name, the values ×2 (the shared expert's down projection).
    RenameDoubled(&'static str),
    /// A tensor of zeros only this layout has.
    Zero(&'static str),
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub kind: Kind,
    pub scope: Scope,
    pub present: Present,
    /// Canonical name; `{l}` is the layer, `{e}` the expert.
    pub canonical: &'static str,
    pub shape: &'static [Dim],
    /// llama.cpp's name (`blk.{l}.…`) and rule, where GGUF has the kind.
    pub gguf: Option<(&'static str, GgufRule)>,
    pub qwen2_moe: Option<QwenRule>,
}

use Dim::*;
use Scope::*;

const fn row(kind: Kind, scope: Scope, present: Present, canonical: &'static str, shape: &'static [Dim]) -> Spec {
    Spec { kind, scope, present, canonical, shape, gguf: None, qwen2_moe: None }
}

const fn gguf(mut s: Spec, name: &'static str, rule: GgufRule) -> Spec {
    s.gguf = Some((name, rule));
    s
}

const fn qwen(mut s: Spec, rule: QwenRule) -> Spec {
    s.qwen2_moe = Some(rule);
    s
}

/// The table, in upstream `state_dict` order. Rows of one expert scope that follow each other
/// expand expert by expert (`experts.0.gate`, `experts.0.down`, `experts.0.up`, `experts.1.…`).
pub static TENSORS: &[Spec] = &[
    gguf(row(Kind::TokenEmbd, Model, Present::Always, "model.embed_tokens.weight", &[Vocab, Hidden]), "token_embd.weight", GgufRule::Copy),
    gguf(row(Kind::AttnQ, Layer, Present::Always, "model.layers.{l}.self_attn.q_proj.weight", &[Query, Hidden]), "blk.{l}.attn_q.weight", GgufRule::PermuteRows(Query)),
    gguf(row(Kind::AttnK, Layer, Present::Always, "model.layers.{l}.self_attn.k_proj.weight", &[KeyValue, Hidden]), "blk.{l}.attn_k.weight", GgufRule::PermuteRows(KeyValue)),
    gguf(row(Kind::AttnV, Layer, Present::Always, "model.layers.{l}.self_attn.v_proj.weight", &[KeyValue, Hidden]), "blk.{l}.attn_v.weight", GgufRule::Copy),
    qwen(row(Kind::AttnQBias, Layer, Present::Qwen2MoeOnly, "", &[Query]), QwenRule::Zero("model.layers.{l}.self_attn.q_proj.bias")),
    qwen(row(Kind::AttnKBias, Layer, Present::Qwen2MoeOnly, "", &[KeyValue]), QwenRule::Zero("model.layers.{l}.self_attn.k_proj.bias")),
    qwen(row(Kind::AttnVBias, Layer, Present::Qwen2MoeOnly, "", &[KeyValue]), QwenRule::Zero("model.layers.{l}.self_attn.v_proj.bias")),
    gguf(row(Kind::AttnOut, Layer, Present::Always, "model.layers.{l}.self_attn.o_proj.weight", &[Hidden, Query]), "blk.{l}.attn_output.weight", GgufRule::Copy),
    gguf(row(Kind::AttnNorm, Layer, Present::Always, "model.layers.{l}.input_layernorm.weight", &[Hidden]), "blk.{l}.attn_norm.weight", GgufRule::Copy),
    gguf(row(Kind::FfnNorm, Layer, Present::Always, "model.layers.{l}.post_attention_layernorm.weight", &[Hidden]), "blk.{l}.ffn_norm.weight", GgufRule::Copy),
    gguf(row(Kind::FfnGate, Layer, Present::Dense, "model.layers.{l}.mlp.gate_proj.weight", &[Ffn, Hidden]), "blk.{l}.ffn_gate.weight", GgufRule::Copy),
    gguf(row(Kind::FfnDown, Layer, Present::Dense, "model.layers.{l}.mlp.down_proj.weight", &[Hidden, Ffn]), "blk.{l}.ffn_down.weight", GgufRule::Copy),
    gguf(row(Kind::FfnUp, Layer, Present::Dense, "model.layers.{l}.mlp.up_proj.weight", &[Ffn, Hidden]), "blk.{l}.ffn_up.weight", GgufRule::Copy),
    gguf(row(Kind::ExpGate, Expert, Present::Moe, "model.layers.{l}.mlp.experts.{e}.gate_proj.weight", &[Ffn, Hidden]), "blk.{l}.ffn_gate_exps.weight", GgufRule::StackExperts),
    gguf(row(Kind::ExpDown, Expert, Present::Moe, "model.layers.{l}.mlp.experts.{e}.down_proj.weight", &[Hidden, Ffn]), "blk.{l}.ffn_down_exps.weight", GgufRule::StackExperts),
    gguf(row(Kind::ExpUp, Expert, Present::Moe, "model.layers.{l}.mlp.experts.{e}.up_proj.weight", &[Ffn, Hidden]), "blk.{l}.ffn_up_exps.weight", GgufRule::StackExperts),
    gguf(row(Kind::MoeRouter, Layer, Present::Moe, "model.layers.{l}.mlp.gate.weight", &[Experts, Hidden]), "blk.{l}.ffn_gate_inp.weight", GgufRule::Copy),
    qwen(
        gguf(row(Kind::ShexpGate, SharedExpert, Present::Moe, "model.layers.{l}.mlp.shared_experts.{e}.gate_proj.weight", &[Ffn, Hidden]), "blk.{l}.ffn_gate_shexp.weight", GgufRule::ConcatRows),
        QwenRule::Rename("model.layers.{l}.mlp.shared_expert.gate_proj.weight"),
    ),
    qwen(
        gguf(row(Kind::ShexpDown, SharedExpert, Present::Moe, "model.layers.{l}.mlp.shared_experts.{e}.down_proj.weight", &[Hidden, Ffn]), "blk.{l}.ffn_down_shexp.weight", GgufRule::ConcatCols),
        QwenRule::RenameDoubled("model.layers.{l}.mlp.shared_expert.down_proj.weight"),
    ),
    qwen(
        gguf(row(Kind::ShexpUp, SharedExpert, Present::Moe, "model.layers.{l}.mlp.shared_experts.{e}.up_proj.weight", &[Ffn, Hidden]), "blk.{l}.ffn_up_shexp.weight", GgufRule::ConcatRows),
        QwenRule::Rename("model.layers.{l}.mlp.shared_expert.up_proj.weight"),
    ),
    qwen(row(Kind::ShexpGateInp, Layer, Present::Qwen2MoeOnly, "", &[One, Hidden]), QwenRule::Zero("model.layers.{l}.mlp.shared_expert_gate.weight")),
    gguf(row(Kind::OutputNorm, Model, Present::Always, "model.norm.weight", &[Hidden]), "output_norm.weight", GgufRule::Copy),
    gguf(row(Kind::Output, Model, Present::Untied, "lm_head.weight", &[Vocab, Hidden]), "output.weight", GgufRule::Copy),
];

pub const EMBED: &str = "model.embed_tokens.weight";
pub const LM_HEAD: &str = "lm_head.weight";
pub const FINAL_NORM: &str = "model.norm.weight";

/// The table's row of `kind`.
pub fn spec(kind: Kind) -> &'static Spec {
    TENSORS.iter().find(|s| s.kind == kind).expect("every kind has a row")
}

/// Fills `{l}` and `{e}` of a name pattern.
pub fn fill(pattern: &str, layer: usize, expert: usize) -> String {
    pattern.replace("{l}", &layer.to_string()).replace("{e}", &expert.to_string())
}

/// The canonical name of `kind` in layer `layer` (and expert `expert`, for expert kinds).
pub fn name(kind: Kind, layer: usize, expert: usize) -> String {
    fill(spec(kind).canonical, layer, expert)
}

/// The canonical name of a layer's projection or norm without `.weight` (`model.layers.3.self_attn.q_proj`).
pub fn module(kind: Kind, layer: usize, expert: usize) -> String {
    let n = name(kind, layer, expert);
    n.strip_suffix(".weight").map(str::to_string).unwrap_or(n)
}

impl Dim {
    pub fn size(self, cfg: &MiniMindConfig) -> usize {
        match self {
            Vocab => cfg.vocab_size,
            Hidden => cfg.hidden_size,
            Query => cfg.num_attention_heads * cfg.head_dim(),
            KeyValue => cfg.num_key_value_heads * cfg.head_dim(),
            Ffn => cfg.intermediate_size,
            Experts => cfg.n_routed_experts,
            One => 1,
        }
    }
}

impl Spec {
    pub fn dims(&self, cfg: &MiniMindConfig) -> Vec<usize> {
        self.shape.iter().map(|d| d.size(cfg)).collect()
    }

    /// Whether a checkpoint with this config has the kind.
    pub fn in_checkpoint(&self, cfg: &MiniMindConfig) -> bool {
        match self.present {
            Present::Always => true,
            Present::Dense => !cfg.use_moe,
            Present::Moe => cfg.use_moe,
            Present::Untied => !cfg.tie_word_embeddings,
            Present::Qwen2MoeOnly => false,
        }
    }

    /// How many of it a layer has.
    pub fn copies(&self, cfg: &MiniMindConfig) -> usize {
        match self.scope {
            Model | Layer => 1,
            Expert => cfg.n_routed_experts,
            SharedExpert => cfg.n_shared_experts,
        }
    }
}

/// The rows that apply, expanded in order: (row, layer, expert). `keep` picks rows.
pub fn expand(cfg: &MiniMindConfig, keep: impl Fn(&Spec) -> bool) -> Vec<(&'static Spec, usize, usize)> {
    let mut out = Vec::new();
    let rows: Vec<&'static Spec> = TENSORS.iter().filter(|s| keep(s)).collect();
    let per_layer = |l: usize, out: &mut Vec<(&'static Spec, usize, usize)>| {
        let mut i = 0;
        while i < rows.len() {
            let s = rows[i];
            if s.scope == Model {
                i += 1;
                continue;
            }
            // A run of rows of one expert scope expands expert by expert.
            let mut j = i + 1;
            while j < rows.len() && rows[j].scope == s.scope && s.scope != Layer {
                j += 1;
            }
            for e in 0..s.copies(cfg) {
                for r in &rows[i..j] {
                    out.push((*r, l, e));
                }
            }
            i = j;
        }
    };
    let first_layer_row = rows.iter().position(|s| s.scope != Model).unwrap_or(rows.len());
    for s in &rows[..first_layer_row] {
        out.push((*s, 0, 0));
    }
    for l in 0..cfg.num_hidden_layers {
        per_layer(l, &mut out);
    }
    for s in rows[first_layer_row..].iter().filter(|s| s.scope == Model) {
        out.push((*s, 0, 0));
    }
    out
}

/// Every tensor the config calls for, in upstream `state_dict` order, with its shape.
pub fn expected_tensors(cfg: &MiniMindConfig) -> Vec<(String, Vec<usize>)> {
    expand(cfg, |s| s.in_checkpoint(cfg)).into_iter().map(|(s, l, e)| (fill(s.canonical, l, e), s.dims(cfg))).collect()
}

/// Which row and indices a canonical name is, if the config has such a tensor.
pub fn parse(canonical: &str, cfg: &MiniMindConfig) -> Option<(&'static Spec, usize, usize)> {
    TENSORS.iter().filter(|s| s.in_checkpoint(cfg)).find_map(|s| {
        let (l, e) = match_pattern(s.canonical, canonical)?;
        let in_range = match s.scope {
            Scope::Model => true,
            Scope::Layer => l < cfg.num_hidden_layers,
            Scope::Expert | Scope::SharedExpert => l < cfg.num_hidden_layers && e < s.copies(cfg),
        };
        in_range.then_some((s, l, e))
    })
}

/// The `{l}` and `{e}` values (0 where absent) that make `pattern` spell `name`.
fn match_pattern(pattern: &str, name: &str) -> Option<(usize, usize)> {
    let (mut l, mut e) = (0, 0);
    let mut rest = name;
    let mut pat = pattern;
    loop {
        match pat.find('{') {
            None => return (rest == pat).then_some((l, e)),
            Some(i) => {
                rest = rest.strip_prefix(&pat[..i])?;
                let close = pat[i..].find('}')? + i;
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                // One spelling per number: no empty or zero-padded indices.
                if digits == 0 || (digits > 1 && rest.starts_with('0')) {
                    return None;
                }
                let value: usize = rest[..digits].parse().ok()?;
                match &pat[i..=close] {
                    "{l}" => l = value,
                    _ => e = value,
                }
                rest = &rest[digits..];
                pat = &pat[close + 1..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_moe_key_counts_match_upstream() {
        // Upstream .pth files carry lm_head too: 21 keys dense, 47 moe (fixture README).
        let dense = MiniMindConfig { num_attention_heads: 4, ..MiniMindConfig::with_hidden(256, 2) };
        assert_eq!(expected_tensors(&dense).len() + 1, 21);
        let moe = MiniMindConfig { use_moe: true, ..dense };
        assert_eq!(expected_tensors(&moe).len() + 1, 47);
    }

    #[test]
    fn upstream_state_dict_order() {
        let moe = MiniMindConfig { use_moe: true, n_routed_experts: 2, ..MiniMindConfig::with_hidden(64, 1) };
        let names: Vec<String> = expected_tensors(&moe).into_iter().map(|(n, _)| n).collect();
        let p = "model.layers.0";
        let want = [
            EMBED.to_string(),
            format!("{p}.self_attn.q_proj.weight"),
            format!("{p}.self_attn.k_proj.weight"),
            format!("{p}.self_attn.v_proj.weight"),
            format!("{p}.self_attn.o_proj.weight"),
            format!("{p}.input_layernorm.weight"),
            format!("{p}.post_attention_layernorm.weight"),
            format!("{p}.mlp.experts.0.gate_proj.weight"),
            format!("{p}.mlp.experts.0.down_proj.weight"),
            format!("{p}.mlp.experts.0.up_proj.weight"),
            format!("{p}.mlp.experts.1.gate_proj.weight"),
            format!("{p}.mlp.experts.1.down_proj.weight"),
            format!("{p}.mlp.experts.1.up_proj.weight"),
            format!("{p}.mlp.gate.weight"),
            format!("{p}.mlp.shared_experts.0.gate_proj.weight"),
            format!("{p}.mlp.shared_experts.0.down_proj.weight"),
            format!("{p}.mlp.shared_experts.0.up_proj.weight"),
            FINAL_NORM.to_string(),
        ];
        assert_eq!(names, want);
        assert_eq!(parse(&format!("{p}.mlp.experts.1.down_proj.weight"), &moe).map(|(s, l, e)| (s.kind, l, e)), Some((Kind::ExpDown, 0, 1)));
        // Every expected name parses back to itself; out-of-range and odd spellings do not.
        for (n, _) in expected_tensors(&moe) {
            let (s, l, e) = parse(&n, &moe).unwrap();
            assert_eq!(fill(s.canonical, l, e), n);
        }
        for bad in ["model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.experts.2.up_proj.weight", "model.layers.00.input_layernorm.weight", "model.layers..mlp.gate.weight", "lm_head.weight"] {
            assert!(parse(bad, &moe).is_none(), "{bad}");
        }
    }
}
