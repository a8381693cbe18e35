//! `mm serve MODEL`: the OpenAI-compatible server (see `mm::serve`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use mm::serve::ServeOptions;

use super::ModelArgs;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8998)]
    port: u16,
    /// The model id clients send and `/v1/models` lists (default: the model's file or directory name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on the API (default: the MM_API_KEY variable, else none).
    #[arg(long, env = "MM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Sequences decoded together in one batched step.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Requests that may wait for a batch slot; beyond, the server answers 503.
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Tokens per sequence, prompt and reply (default: the model's context, at most 2048);
    /// longer conversations are cut from the left, keeping the system prompt.
    #[arg(long)]
    ctx: Option<usize>,
    /// Seconds a request may run before it is ended (finish_reason "length").
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

impl ServeArgs {
    /// The server's options for a model whose context is `declared` positions.
    fn options(&self, declared: usize) -> ServeOptions {
        let path = self.model.path();
        let model_name = self.served_model_name.clone().unwrap_or_else(|| {
            path.file_stem().or_else(|| path.file_name()).map_or_else(|| "mm".into(), |s| s.to_string_lossy().into_owned())
        });
        ServeOptions {
            host: self.host.clone(),
            port: self.port,
            model_name,
            api_key: self.api_key.clone(),
            ctx: self.ctx.unwrap_or(declared.min(2048)).min(declared),
            max_batch: self.max_batch.max(1),
            queue: self.queue.max(1),
            request_timeout: Duration::from_secs(self.timeout.max(1)),
        }
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    let ip: IpAddr = a.host.parse().with_context(|| format!("--host {:?}: not an IP address", a.host))?;
    if mm::train::reward_model::hf::is_reward_model_dir(a.model.path()) {
        return run_reward(a, ip);
    }
    let loaded = a.model.load()?;
    let opts = a.options(loaded.model.config.max_position_embeddings);
    let name = opts.model_name.clone();
    let summary = loaded.checkpoint_summary.clone();
    let (router, state) = mm::serve::app(loaded.model, loaded.tokenizer, loaded.template, &opts);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(mm::serve::serve(router, SocketAddr::new(ip, a.port), |addr| {
        println!(
            "serving {summary} as `{name}` on http://{addr}  (OpenAI API at http://{addr}/v1, chat page at http://{addr}/; context {} tokens, batch {}{})",
            state.ctx,
            opts.max_batch,
            if opts.api_key.is_some() { ", API key required" } else { "" }
        );
    }))
}

/// A reward model (LlamaForSequenceClassification directory): vLLM's `/pooling` API.
fn run_reward(a: ServeArgs, ip: IpAddr) -> Result<()> {
    super::set_threads(a.model.threads);
    let device = super::device_arg(&a.model.device)?;
    let path = a.model.path();
    let rc = mm::train::reward_model::hf::read(path)?;
    let model = mm::train::reward_model::RewardModel::new(&rc.trunk, &rc.score, rc.pad_id, &device)?;
    let opts = a.options(model.context());
    let name = opts.model_name.clone();
    let (router, state) = mm::serve::pooling::reward_app(model, &opts);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(mm::serve::serve(router, SocketAddr::new(ip, a.port), |addr| {
        println!(
            "serving reward model {} as `{name}` on http://{addr}  (vLLM pooling API at http://{addr}/pooling; context {} tokens{})",
            path.display(),
            state.ctx,
            if opts.api_key.is_some() { ", API key required" } else { "" }
        );
    }))
}
