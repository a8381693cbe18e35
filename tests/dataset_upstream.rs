//! `mm-dataset` against upstream `dataset/lm_dataset.py` (minimind 5959396): with the real
//! MiniMind2 tokenizer and chat template, the pretrain batch, the SFT example and the DPO pair
//! of `shared/fixtures/minimind2/inputs.json` must come out token for token, through the same
//! jsonl → index → loader path training uses.

mod common;

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use mm::converters::TokenizerFiles;
use mm_dataset::{
    AssistantMarkers, Dataset, DatasetOptions, DpoDataset, LmBatch, Loader, LoaderOptions, PretrainDataset, RlaifDataset,
    SftDataset, TextEncoder,
};

/// The root crate's tokenizer and template behind the dataset crate's trait.
type MmEncoder = mm::train::encoder::ChatEncoder;

fn minimind2() -> MmEncoder {
    mm::train::encoder::chat_encoder(&TokenizerFiles::builtin_minimind2()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    common::ids(v)
}

fn rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array().unwrap().iter().map(ids).collect()
}

fn write_jsonl(dir: &Path, name: &str, lines: &[Value]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    for l in lines {
        writeln!(f, "{}", serde_json::to_string(l).unwrap()).unwrap();
    }
    path
}

/// The whole file as one batch, in file order.
fn one_batch<D: Dataset>(dataset: D) -> D::Batch {
    let n = dataset.len();
    let mut loader = Loader::new(dataset, LoaderOptions { shuffle: false, ..LoaderOptions::new(n) }).unwrap();
    let (_, batch) = loader.next_batch().unwrap().unwrap();
    assert!(loader.next_batch().unwrap().is_none());
    batch
}

/// Counts equal positions of `got` row `r` against `want`, per array.
#[derive(Default)]
struct Tally {
    matched: usize,
    total: usize,
    mismatches: Vec<String>,
}

impl Tally {
    fn compare(&mut self, what: &str, got: &[u32], want: &[u32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            self.total += 1;
            if g == w {
                self.matched += 1;
            } else if self.mismatches.len() < 10 {
                self.mismatches.push(format!("{what}[{i}]: got {g}, upstream {w}"));
            }
        }
    }

    fn compare_batch(&mut self, what: &str, b: &LmBatch, row: usize, x: &[u32], y: &[u32], mask: &[u32]) {
        let (bx, by, bm) = b.row(row);
        let bm: Vec<u32> = bm.iter().map(|&m| m as u32).collect();
        self.compare(&format!("{what}.X"), bx, x);
        self.compare(&format!("{what}.Y"), by, y);
        self.compare(&format!("{what}.loss_mask"), &bm, mask);
    }

    fn finish(self, what: &str) {
        println!("{what}: {}/{} positions match upstream", self.matched, self.total);
        assert!(self.mismatches.is_empty(), "{what}: mismatches:\n{}", self.mismatches.join("\n"));
    }
}

fn inputs(shared: &Path) -> Value {
    common::read_json(&shared.join("fixtures/minimind2/inputs.json"))
}

#[test]
fn pretrain_batch_matches_upstream() {
    let Some(shared) = common::shared_or_skip("pretrain_batch_matches_upstream") else { return };
    let fx = &inputs(&shared)["pretrain_batch"];
    let max_length = fx["max_length"].as_u64().unwrap() as usize;
    let texts: Vec<Value> = fx["texts"].as_array().unwrap().iter().map(|t| json!({"text": t})).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write_jsonl(dir.path(), "pretrain.jsonl", &texts);

    let batch = one_batch(PretrainDataset::open(&path, minimind2(), DatasetOptions::new(max_length)).unwrap());
    assert_eq!((batch.rows, batch.seq_len), (2, max_length - 1));
    let (x, y, mask) = (rows(&fx["X"]), rows(&fx["Y"]), rows(&fx["loss_mask"]));
    let mut tally = Tally::default();
    for r in 0..2 {
        tally.compare_batch(&format!("row{r}"), &batch, r, &x[r], &y[r], &mask[r]);
    }
    let real: Vec<usize> = mask.iter().map(|m| m.iter().filter(|&&v| v == 1).count()).collect();
    println!("pretrain_batch: mask ones per row {real:?}");
    tally.finish("pretrain_batch");
}

#[test]
fn sft_example_matches_upstream() {
    let Some(shared) = common::shared_or_skip("sft_example_matches_upstream") else { return };
    let fx = &inputs(&shared)["sft_example"];
    let max_length = fx["max_length"].as_u64().unwrap() as usize;
    let enc = minimind2();

    let markers = AssistantMarkers::from_encoder(&enc).unwrap();
    assert_eq!(markers.bos_id, ids(&fx["bos_id"]));
    assert_eq!(markers.eos_id, ids(&fx["eos_id"]));
    assert_eq!(enc.render_chat(&fx["conversations"], None, false).unwrap(), fx["rendered"].as_str().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let path = write_jsonl(dir.path(), "sft.jsonl", &[json!({"conversations": fx["conversations"]})]);
    let batch = one_batch(SftDataset::open(&path, enc, DatasetOptions::new(max_length)).unwrap());
    assert_eq!((batch.rows, batch.seq_len), (1, max_length - 1));
    let mut tally = Tally::default();
    tally.compare_batch("sft", &batch, 0, &ids(&fx["X"]), &ids(&fx["Y"]), &ids(&fx["loss_mask"]));
    println!("sft_example: {} mask tokens", batch.loss_mask.iter().filter(|&&m| m == 1.0).count());
    tally.finish("sft_example");
}

#[test]
fn dpo_pair_matches_upstream() {
    let Some(shared) = common::shared_or_skip("dpo_pair_matches_upstream") else { return };
    let fx = &inputs(&shared)["dpo_pair"];
    let max_length = fx["max_length"].as_u64().unwrap() as usize;
    let enc = minimind2();
    let conv = &fx["conversations"];
    assert_eq!(enc.render_chat(&conv["chosen"], None, false).unwrap(), fx["rendered_chosen"].as_str().unwrap());
    assert_eq!(enc.render_chat(&conv["rejected"], None, false).unwrap(), fx["rendered_rejected"].as_str().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let path = write_jsonl(dir.path(), "dpo.jsonl", &[conv.clone()]);
    let batch = one_batch(DpoDataset::open(&path, enc, DatasetOptions::new(max_length)).unwrap());
    let mut tally = Tally::default();
    tally.compare_batch("chosen", &batch.chosen, 0, &ids(&fx["x_chosen"]), &ids(&fx["y_chosen"]), &ids(&fx["mask_chosen"]));
    tally.compare_batch(
        "rejected",
        &batch.rejected,
        0,
        &ids(&fx["x_rejected"]),
        &ids(&fx["y_rejected"]),
        &ids(&fx["mask_rejected"]),
    );
    let count = |b: &LmBatch| b.loss_mask.iter().filter(|&&m| m == 1.0).count();
    println!("dpo_pair: mask tokens chosen {}, rejected {}", count(&batch.chosen), count(&batch.rejected));
    assert_eq!((count(&batch.chosen), count(&batch.rejected)), (22, 10));
    // train_dpo.py's cat([chosen, rejected])
    let cat = batch.concatenated();
    assert_eq!((cat.rows, cat.seq_len), (2, max_length - 1));
    tally.finish("dpo_pair");
}

/// RLAIF prompts are the eval prompts: a one-question conversation renders like
/// `apply_chat_template(messages, add_generation_prompt=True)`.
#[test]
fn rlaif_prompts_match_upstream_rendering() {
    let Some(shared) = common::shared_or_skip("rlaif_prompts_match_upstream_rendering") else { return };
    let fx = inputs(&shared);
    let prompts: Vec<&Value> =
        fx["prompts"].as_array().unwrap().iter().filter(|p| p["messages"].as_array().unwrap().len() == 1).collect();
    assert!(prompts.len() >= 3);
    let lines: Vec<Value> = prompts
        .iter()
        .map(|p| json!({"conversations": [{"role": "user", "content": p["messages"][0]["content"]}, {"role": "assistant", "content": "无"}]}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write_jsonl(dir.path(), "rlaif.jsonl", &lines);
    let enc = minimind2();
    let batch = one_batch(RlaifDataset::open(&path, &enc, DatasetOptions::new(0)).unwrap());
    for (p, got) in prompts.iter().zip(&batch.prompts) {
        assert_eq!(got, p["rendered"].as_str().unwrap(), "{}", p["name"]);
        assert_eq!(enc.encode(got, false).unwrap(), ids(&p["input_ids"]), "{}", p["name"]);
    }
    assert!(batch.answers.iter().all(|a| a == "无"));
    println!("rlaif: {} prompts render as upstream", prompts.len());
}

/// The shipped sample files go through the real template (tool calls, `<think>`, own system
/// prompts) and every SFT/DPO row learns something.
#[test]
fn samples_render_with_minimind2() -> Result<()> {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataset/samples");
    let enc = minimind2();
    let opts = DatasetOptions::new(512);

    let pre = PretrainDataset::open(&samples.join("pretrain_sample.jsonl"), &enc, opts)?;
    let sft = SftDataset::open(&samples.join("sft_sample.jsonl"), &enc, opts)?;
    let dpo = DpoDataset::open(&samples.join("dpo_sample.jsonl"), &enc, opts)?;
    let rl = RlaifDataset::open(&samples.join("rlaif_sample.jsonl"), &enc, opts)?;
    for i in 0..pre.len() {
        pre.example(i)?;
    }
    let mut tool_rows = 0;
    for i in 0..sft.len() {
        let ex = sft.example(i)?;
        assert!(ex.mask_count() > 0, "sft line {} has no loss", i + 1);
        let text = enc.tokenizer.decode(&ex.x, false)?;
        if text.contains("<tools>") {
            assert!(text.contains("<tool_call>") || !text.contains("<tool_response>"), "line {}", i + 1);
            tool_rows += 1;
        }
    }
    for i in 0..dpo.len() {
        let ex = dpo.example(i).with_context(|| format!("dpo line {}", i + 1))?;
        assert!(ex.chosen.mask_count() > 0 && ex.rejected.mask_count() > 0, "dpo line {}", i + 1);
    }
    for i in 0..rl.len() {
        let ex = rl.example(i)?;
        assert!(ex.prompt.ends_with("<|im_start|>assistant\n"));
    }
    assert!(tool_rows >= 5, "expected the tool-call samples to render a <tools> block, got {tool_rows}");
    println!(
        "samples: pretrain {}, sft {} ({tool_rows} with tools), dpo {}, rlaif {}",
        pre.len(),
        sft.len(),
        dpo.len(),
        rl.len()
    );
    Ok(())
}
