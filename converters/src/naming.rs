//! The canonical tensor names and shapes of a MiniMind checkpoint.
//!
//! Canonical names are upstream's `state_dict` names (which HF MiniMind and HF Llama
//! safetensors share for dense models); the tied `lm_head.weight` is omitted unless the
//! checkpoint really has a separate output matrix.

use crate::config::MiniMindConfig;

pub const EMBED: &str = "model.embed_tokens.weight";
pub const LM_HEAD: &str = "lm_head.weight";
pub const FINAL_NORM: &str = "model.norm.weight";

/// Every tensor the config calls for, in upstream `state_dict` order, with its shape.
pub fn expected_tensors(cfg: &MiniMindConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let kv = cfg.num_key_value_heads * cfg.head_dim();
    let ffn = cfg.intermediate_size;
    let mut out = vec![(EMBED.to_string(), vec![cfg.vocab_size, h])];
    let feed_forward = |out: &mut Vec<(String, Vec<usize>)>, prefix: String| {
        out.push((format!("{prefix}.gate_proj.weight"), vec![ffn, h]));
        out.push((format!("{prefix}.down_proj.weight"), vec![h, ffn]));
        out.push((format!("{prefix}.up_proj.weight"), vec![ffn, h]));
    };
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        if cfg.use_moe {
            for e in 0..cfg.n_routed_experts {
                feed_forward(&mut out, format!("{p}.mlp.experts.{e}"));
            }
            out.push((format!("{p}.mlp.gate.weight"), vec![cfg.n_routed_experts, h]));
            for e in 0..cfg.n_shared_experts {
                feed_forward(&mut out, format!("{p}.mlp.shared_experts.{e}"));
            }
        } else {
            feed_forward(&mut out, format!("{p}.mlp"));
        }
    }
    out.push((FINAL_NORM.to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push((LM_HEAD.to_string(), vec![cfg.vocab_size, h]));
    }
    out
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
}
