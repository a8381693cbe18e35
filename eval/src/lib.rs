//! `mm eval`: perplexity over pretrain/SFT text and multiple-choice accuracy (C-Eval / CMMLU
//! style), scored the way lm-evaluation-harness scores them.

pub mod loglikelihood;
pub mod multiple_choice;
pub mod perplexity;
pub mod prompt;
pub mod questions;
