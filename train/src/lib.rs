//! The training core shared by every stage: trainable parameters, torch's AdamW, upstream's
//! cosine schedule, masked cross-entropy and one optimizer step with global-norm clipping.

pub mod adamw;
pub mod distill;
pub mod distributed;
pub mod dpo;
pub mod encoder;
pub mod fixture_step;
pub mod fused_ce;
pub mod graph_step;
pub mod lora;
pub mod loss;
pub mod objective;
pub mod params;
pub mod plot;
pub mod reason;
pub mod rendezvous;
pub mod resume;
pub mod rlaif;
pub mod reward_model;
pub mod rewards;
pub mod rollout;
pub mod schedule;
pub mod step;
pub mod tcp_group;
pub mod trainer;

pub use adamw::{AdamW, AdamWConfig};
pub use params::TrainableModel;
pub use schedule::upstream_lr;
