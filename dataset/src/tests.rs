//! Crate tests with a toy character-level encoder.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::*;

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Ids: the three specials are 0, 1, 2; any other char is its code point + 3. With `add_bos`
/// its "post-processor" puts id 1 in front when special tokens are added. A message whose
/// content is `RENDER_FAIL` makes the template fail.
struct Fake {
    add_bos: bool,
}

impl Fake {
    fn plain() -> Self {
        Self { add_bos: false }
    }
    fn id(c: char) -> u32 {
        c as u32 + 3
    }
    fn ids(s: &str) -> Vec<u32> {
        Fake::plain().encode(s, false).unwrap()
    }
}

impl TextEncoder for Fake {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if add_special_tokens && self.add_bos {
            out.push(1);
        }
        let mut rest = text;
        'outer: while let Some(c) = rest.chars().next() {
            for (id, s) in SPECIALS.iter().enumerate() {
                if let Some(r) = rest.strip_prefix(s) {
                    out.push(id as u32);
                    rest = r;
                    continue 'outer;
                }
            }
            out.push(Fake::id(c));
            rest = &rest[c.len_utf8()..];
        }
        Ok(out)
    }

    fn render_chat(&self, messages: &Value, tools: Option<&Value>, add_generation_prompt: bool) -> Result<String> {
        let mut s = String::new();
        if let Some(t) = tools {
            s += &format!("<|im_start|>tools\n{}<|im_end|>\n", t.as_array().map_or(0, Vec::len));
        }
        for m in messages.as_array().unwrap() {
            let content = m["content"].as_str().unwrap_or("");
            if content == "RENDER_FAIL" {
                bail!("template raised: bad message");
            }
            s += &format!("<|im_start|>{}\n{}<|im_end|>\n", m["role"].as_str().unwrap(), content);
        }
        if add_generation_prompt {
            s += "<|im_start|>assistant\n";
        }
        Ok(s)
    }

    fn pad_id(&self) -> u32 {
        0
    }
    fn bos_token(&self) -> &str {
        "<|im_start|>"
    }
    fn eos_token(&self) -> &str {
        "<|im_end|>"
    }
}

fn write_file(lines: &[String]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    (dir, path)
}

fn pretrain_lines(n: usize) -> Vec<String> {
    (0..n).map(|i| json!({"text": format!("t{i}")}).to_string()).collect()
}

fn line_error(e: &anyhow::Error) -> &LineError {
    e.downcast_ref::<LineError>().unwrap_or_else(|| panic!("not a LineError: {e:#}"))
}

#[test]
fn markers_of_fake() {
    let m = AssistantMarkers::from_encoder(&Fake::plain()).unwrap();
    let mut bos = vec![1];
    bos.extend(Fake::ids("assistant"));
    assert_eq!(m.bos_id, bos);
    assert_eq!(m.eos_id, vec![2]);
    assert!(AssistantMarkers::new(vec![], vec![2]).is_err());
}

#[test]
fn pretrain_pads_truncates_and_masks() {
    let e = pretrain_example(&Fake::plain(), "abc", 6).unwrap();
    let (a, b, c) = (Fake::id('a'), Fake::id('b'), Fake::id('c'));
    assert_eq!(e.x, vec![a, b, c, 0, 0]);
    assert_eq!(e.y, vec![b, c, 0, 0, 0]);
    assert_eq!(e.loss_mask, vec![1, 1, 0, 0, 0]);
    // truncation: exactly max_length ids, all real → mask all ones
    let e = pretrain_example(&Fake::plain(), "abcdefgh", 4).unwrap();
    assert_eq!(e.x, vec![a, b, c]);
    assert_eq!(e.loss_mask, vec![1, 1, 1]);
    // special tokens are added (the post-processor runs)
    let e = pretrain_example(&Fake { add_bos: true }, "ab", 4).unwrap();
    assert_eq!(e.x, vec![1, a, b]);
    assert_eq!(e.loss_mask, vec![1, 1, 0]);
    // a literal pad token in the text is masked like padding (upstream quirk)
    let e = pretrain_example(&Fake::plain(), "a<|endoftext|>b", 4).unwrap();
    assert_eq!(e.x, vec![a, 0, b]);
    assert_eq!(e.loss_mask, vec![0, 1, 0]);
    assert!(pretrain_example(&Fake::plain(), "a", 1).is_err());
}

#[test]
fn sft_example_masks_assistant_turns() {
    let enc = Fake::plain();
    let markers = AssistantMarkers::from_encoder(&enc).unwrap();
    let conv = json!([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]);
    let max = 40;
    let ex = sft_example(&enc, &markers, &conv, max).unwrap();
    let text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n";
    let mut ids = Fake::ids(text);
    let real = ids.len();
    ids.resize(max, 0);
    assert_eq!(ex.x, ids[..max - 1]);
    assert_eq!(ex.y, ids[1..]);
    // full-sequence mask: 'y', 'o', <|im_end|>, '\n' (not the '\n' after "assistant")
    let yo = real - 4;
    let mut full = vec![0u8; max];
    for m in &mut full[yo..real] {
        *m = 1;
    }
    assert_eq!(ex.loss_mask, full[1..]);
    assert_eq!(ex.mask_count(), 4);

    // truncated inside the answer: the mask runs to the end
    let cut = yo + 1; // keeps 'y' only
    let ex = sft_example(&enc, &markers, &conv, cut).unwrap();
    assert_eq!(ex.loss_mask.last(), Some(&1));
    assert_eq!(ex.mask_count(), 1);
    // truncated right after "assistant": nothing to learn
    let ex = sft_example(&enc, &markers, &conv, yo - 1).unwrap();
    assert_eq!(ex.mask_count(), 0);
}

#[test]
fn sft_tools_come_from_first_system_message() {
    let conv = json!([
        {"role": "system", "content": "s", "functions": [{"type": "function", "function": {"name": "f"}}]},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]);
    assert_eq!(sft_tools(&conv), Some(&conv[0]["functions"]));
    let enc = Fake::plain();
    let ids = sft_ids(&enc, &conv, sft_tools(&conv), 200).unwrap();
    assert_eq!(ids[..8], Fake::ids("<|im_start|>tools\n1")[..]);
    // DPO ignores functions
    let m = AssistantMarkers::from_encoder(&enc).unwrap();
    let d = dpo_side(&enc, &m, &conv, 200).unwrap();
    assert_eq!(d.x[..8], Fake::ids("<|im_start|>system\ns")[..8]);
}

#[test]
fn dpo_and_rlaif_examples() {
    let enc = Fake::plain();
    let m = AssistantMarkers::from_encoder(&enc).unwrap();
    let chosen = json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}]);
    let rejected = json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "no"}]);
    let d = dpo_example(&enc, &m, &chosen, &rejected, 48).unwrap();
    assert_eq!(d.chosen.len(), 47);
    assert_eq!(d.rejected.len(), 47);
    assert_eq!(d.chosen.mask_count(), 4 + 2);
    assert_eq!(d.rejected.mask_count(), 2 + 2);

    // roles are reassigned by position; the last turn is the answer
    let r = rlaif_example(&enc, &["q1", "a1", "q2", "final"]).unwrap();
    assert_eq!(
        r.prompt,
        "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(r.answer, "final");
}

#[test]
fn bad_lines_report_file_and_line() {
    let lines = vec![
        json!({"text": "ok"}).to_string(),
        "{\"text\": \"unterminated".to_string(),
        String::new(),
        json!({"txt": "x"}).to_string(),
        json!({"text": 7}).to_string(),
        json!({"text": "fine"}).to_string(),
    ];
    let (_dir, path) = write_file(&lines);
    let err = PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(8)).err().unwrap();
    let le = line_error(&err);
    assert_eq!(le.line, 2);
    assert_eq!(le.path, path);
    assert!(le.message.starts_with("bad JSON"), "{}", le.message);
    assert!(err.to_string().starts_with(&format!("{}:2: bad JSON", path.display())), "{err}");

    // each kind of bad line, one at a time
    let only = |bad: &str| {
        let (_d, p) = write_file(&[json!({"text": "ok"}).to_string(), bad.to_string()]);
        let err = PretrainDataset::open(&p, Fake::plain(), DatasetOptions::new(8)).err().unwrap();
        let le = line_error(&err).clone();
        assert_eq!(le.line, 2);
        le.message
    };
    assert_eq!(only(""), "empty line (expected a JSON object)");
    assert_eq!(only("{\"txt\": 1}"), "missing field \"text\"");
    assert_eq!(only("{\"text\": [1]}"), "field \"text\" must be a string, found an array");

    // skipping: counted, never silent, and good lines keep their real line numbers
    let ds = PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(8).skip_bad_lines(true)).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.index().total_lines(), 6);
    assert_eq!(ds.index().skipped_lines(), &[2, 3, 4, 5]);
    assert_eq!(ds.index().report().at_index, 4);
    assert_eq!(ds.index().report().first_errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
    assert_eq!(ds.index().line_number(0), 1);
    assert_eq!(ds.index().line_number(1), 6);
    let shown = ds.index().report().to_string();
    assert!(shown.starts_with("skipped 4 bad line(s) (4 when indexing, 0 when reading)"), "{shown}");
    let mut loader = Loader::new(ds, LoaderOptions { shuffle: false, ..LoaderOptions::new(4) }).unwrap();
    let (_, batch) = loader.next_batch().unwrap().unwrap();
    assert_eq!(batch.lines, vec![1, 6]);
    assert_eq!(loader.report().total(), 4);
}

#[test]
fn line_numbers_with_many_skipped_lines() {
    // bad lines at a pseudo-random pattern; every good line must map to its real number
    let mut lines = Vec::new();
    let mut good = Vec::new();
    let mut rng = SplitMix64::new(5);
    for n in 1..=300u64 {
        if rng.below(3) == 0 {
            lines.push("not json".to_string());
        } else {
            lines.push(json!({"text": format!("line {n}")}).to_string());
            good.push(n);
        }
    }
    let (_dir, path) = write_file(&lines);
    let ds = PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(4).skip_bad_lines(true)).unwrap();
    assert_eq!(ds.len(), good.len());
    assert_eq!(ds.index().report().at_index as usize, 300 - good.len());
    assert_eq!(ds.index().report().first_errors.len(), jsonl::KEEP_ERRORS);
    for (i, &n) in good.iter().enumerate() {
        assert_eq!(ds.index().line_number(i), n);
        let v = ds.index().read_json(i).unwrap();
        assert_eq!(v["text"], format!("line {n}"));
    }
}

#[test]
fn read_time_failures_skip_and_count() {
    let conv = |c: &str| json!({"conversations": [{"role": "user", "content": c}, {"role": "assistant", "content": "a"}]}).to_string();
    let lines = vec![conv("q0"), conv("RENDER_FAIL"), conv("q2"), conv("q3")];
    let (_dir, path) = write_file(&lines);
    let opts = LoaderOptions { shuffle: false, ..LoaderOptions::new(2) };

    let ds = SftDataset::open(&path, Fake::plain(), DatasetOptions::new(32)).unwrap();
    let mut loader = Loader::new(ds, opts).unwrap();
    let err = loader.next_batch().unwrap_err();
    let le = line_error(&err);
    assert_eq!(le.line, 2);
    assert!(le.message.contains("template raised"), "{}", le.message);

    let ds = SftDataset::open(&path, Fake::plain(), DatasetOptions::new(32).skip_bad_lines(true)).unwrap();
    let mut loader = Loader::new(ds, opts).unwrap();
    let (info, b) = loader.next_batch().unwrap().unwrap();
    assert_eq!(b.rows, 2);
    assert_eq!(b.lines, vec![1, 3]); // line 2 replaced by line 3
    assert_eq!(info.end, Position { epoch: 0, index: 3 });
    let (_, b) = loader.next_batch().unwrap().unwrap();
    assert_eq!(b.lines, vec![4]);
    assert!(loader.next_batch().unwrap().is_none());
    assert_eq!(loader.report().at_read, 1);
    assert_eq!(loader.report().first_errors[0].line, 2);
    assert_eq!(loader.state().skipped_at_read, 1);
}

#[test]
fn index_handles_crlf_and_missing_final_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    std::fs::write(&path, "{\"text\": \"a\"}\r\n{\"text\": \"中文\"}\n{\"text\": \"c\"}").unwrap();
    let ds = PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(4)).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.example(1).unwrap().x, vec![Fake::id('中'), Fake::id('文'), 0]);
    assert_eq!(ds.example(2).unwrap().x, vec![Fake::id('c'), 0, 0]);
    // an empty file indexes to nothing, and the loader says so
    std::fs::write(&path, "").unwrap();
    let ds = PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(4)).unwrap();
    assert!(ds.is_empty());
    assert!(Loader::new(ds, LoaderOptions::new(2)).err().unwrap().to_string().contains("no usable lines"));
}

#[test]
fn shuffle_is_deterministic_and_documented() {
    let a = epoch_order(100, 7, 0, true);
    assert_eq!(a, epoch_order(100, 7, 0, true));
    assert_ne!(a, epoch_order(100, 8, 0, true));
    assert_ne!(a, epoch_order(100, 7, 1, true));
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_eq!(epoch_order(5, 7, 0, false), vec![0, 1, 2, 3, 4]);
    // pinned: the order must not change between versions (resume depends on it)
    assert_eq!(epoch_order(10, 42, 0, true), PINNED_42_0);
    assert_eq!(epoch_order(10, 42, 1, true), PINNED_42_1);
    // SplitMix64 reference outputs for seed 0 (from the published algorithm)
    let mut r = SplitMix64::new(0);
    assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
}

// Computed independently with a Python transcription of the algorithm in `loader`'s docs.
const PINNED_42_0: [usize; 10] = [0, 5, 3, 6, 1, 2, 4, 9, 8, 7];
const PINNED_42_1: [usize; 10] = [7, 9, 5, 6, 8, 1, 0, 4, 3, 2];

fn collect_lines<D: Dataset<Batch = LmBatch>>(loader: &mut Loader<D>) -> Vec<(u64, Vec<u64>)> {
    let mut out = Vec::new();
    while let Some((info, b)) = loader.next_batch().unwrap() {
        assert_eq!(b.x.len(), b.rows * b.seq_len);
        out.push((info.epoch, b.lines));
    }
    out
}

#[test]
fn batching_shapes_and_epochs() {
    let (_dir, path) = write_file(&pretrain_lines(10));
    let open = || PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(6)).unwrap();
    let opts = LoaderOptions { epochs: 2, seed: 3, ..LoaderOptions::new(4) };
    let mut loader = Loader::new(open(), opts).unwrap();
    assert_eq!(loader.steps_per_epoch(), 3);
    let (info, b) = loader.next_batch().unwrap().unwrap();
    assert_eq!((b.rows, b.seq_len), (4, 5));
    assert_eq!((b.x.len(), b.y.len(), b.loss_mask.len()), (20, 20, 20));
    assert_eq!((info.epoch, info.step, info.start, info.end), (0, 0, Position { epoch: 0, index: 0 }, Position { epoch: 0, index: 4 }));
    // "t3" → 't', '3', pad…: X row = [t, 3, 0, 0, 0], mask = [1, 0, 0, 0, 0]
    let (x, _, m) = b.row(0);
    assert_eq!(x[2..], [0, 0, 0]);
    assert_eq!(m, [1.0, 0.0, 0.0, 0.0, 0.0]);

    let mut loader = Loader::new(open(), opts).unwrap();
    let all = collect_lines(&mut loader);
    let rows: Vec<usize> = all.iter().map(|(_, l)| l.len()).collect();
    assert_eq!(rows, vec![4, 4, 2, 4, 4, 2]);
    // each epoch is a permutation of all lines, in a different order
    let epoch = |e: u64| all.iter().filter(|(ep, _)| *ep == e).flat_map(|(_, l)| l.clone()).collect::<Vec<_>>();
    let (e0, e1) = (epoch(0), epoch(1));
    assert_ne!(e0, e1);
    let mut s = e0.clone();
    s.sort_unstable();
    assert_eq!(s, (1..=10).collect::<Vec<_>>());
    let expect: Vec<u64> = epoch_order(10, 3, 0, true).iter().map(|&i| i as u64 + 1).collect();
    assert_eq!(e0, expect);

    let mut loader = Loader::new(open(), LoaderOptions { drop_last: true, ..opts }).unwrap();
    assert_eq!(loader.steps_per_epoch(), 2);
    let rows: Vec<usize> = collect_lines(&mut loader).iter().map(|(_, l)| l.len()).collect();
    assert_eq!(rows, vec![4, 4, 4, 4]);
}

#[test]
fn resume_is_exact() {
    let (_dir, path) = write_file(&pretrain_lines(11));
    let open = || PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(5)).unwrap();
    let opts = LoaderOptions { epochs: 3, seed: 99, ..LoaderOptions::new(3) };
    let full = collect_lines(&mut Loader::new(open(), opts).unwrap());
    assert_eq!(full.len(), 12);
    for stop in 0..full.len() {
        let mut first = Loader::new(open(), opts).unwrap();
        let mut got = Vec::new();
        for _ in 0..stop {
            let (info, b) = first.next_batch().unwrap().unwrap();
            got.push((info.epoch, b.lines));
        }
        // the state goes through JSON, as in a checkpoint
        let saved = serde_json::to_string(&first.state()).unwrap();
        let state: LoaderState = serde_json::from_str(&saved).unwrap();
        let mut resumed = Loader::resume(open(), opts, &state).unwrap();
        got.extend(collect_lines(&mut resumed));
        assert_eq!(got, full, "resumed after {stop} batches");
        assert_eq!(resumed.state().batches, 12);
    }
    // a state from other data or another seed is refused
    let mut l = Loader::new(open(), opts).unwrap();
    l.next_batch().unwrap();
    let state = l.state();
    assert!(Loader::resume(open(), LoaderOptions { seed: 1, ..opts }, &state).is_err());
    let (_d2, other) = write_file(&pretrain_lines(12));
    let ds = PretrainDataset::open(&other, Fake::plain(), DatasetOptions::new(5)).unwrap();
    assert!(Loader::resume(ds, opts, &state).is_err());
}

#[test]
fn dpo_and_rlaif_loaders() {
    let pair = |a: &str| {
        json!({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}],
               "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]})
        .to_string()
    };
    let (_dir, path) = write_file(&[pair("aa"), pair("bbb"), pair("c")]);
    let ds = DpoDataset::open(&path, Fake::plain(), DatasetOptions::new(40)).unwrap();
    let mut loader = Loader::new(ds, LoaderOptions { shuffle: false, ..LoaderOptions::new(2) }).unwrap();
    let (_, b) = loader.next_batch().unwrap().unwrap();
    assert_eq!((b.chosen.rows, b.chosen.seq_len, b.rejected.rows), (2, 39, 2));
    let cat = b.concatenated();
    assert_eq!((cat.rows, cat.x.len()), (4, 4 * 39));
    assert_eq!(cat.row(2).0, b.rejected.row(0).0);
    assert_eq!(b.chosen.loss_mask.iter().sum::<f32>(), (2.0 + 2.0) + (3.0 + 2.0));

    let conv = |q: &str| json!({"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": "无"}]}).to_string();
    let (_dir2, path) = write_file(&[conv("问题一"), conv("q2"), "{\"conversations\": [{\"role\": \"user\"}]}".into()]);
    assert_eq!(line_error(&RlaifDataset::open(&path, Fake::plain(), DatasetOptions::new(0)).err().unwrap()).line, 3);
    let ds = RlaifDataset::open(&path, Fake::plain(), DatasetOptions::new(0).skip_bad_lines(true)).unwrap();
    let mut loader = Loader::new(ds, LoaderOptions { shuffle: false, ..LoaderOptions::new(8) }).unwrap();
    let (_, b) = loader.next_batch().unwrap().unwrap();
    assert_eq!(b.prompts[0], "<|im_start|>user\n问题一<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(b.answers, vec!["无", "无"]);
    assert_eq!(loader.report().at_index, 1);
}

/// The shipped sample files parse without a bad line.
#[test]
fn samples_are_clean() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples");
    let enc = Fake::plain();
    let n = PretrainDataset::open(&dir.join("pretrain_sample.jsonl"), &enc, DatasetOptions::new(64)).unwrap().len();
    assert!(n >= 24);
    let sft = SftDataset::open(&dir.join("sft_sample.jsonl"), &enc, DatasetOptions::new(512)).unwrap();
    assert!(sft.len() >= 24);
    for i in 0..sft.len() {
        assert!(sft.example(i).unwrap().mask_count() > 0, "sft line {}", i + 1);
    }
    let dpo = DpoDataset::open(&dir.join("dpo_sample.jsonl"), &enc, DatasetOptions::new(512)).unwrap();
    assert!(dpo.len() >= 24);
    for i in 0..dpo.len() {
        dpo.example(i).unwrap();
    }
    let rl = RlaifDataset::open(&dir.join("rlaif_sample.jsonl"), &enc, DatasetOptions::new(512)).unwrap();
    assert!(rl.len() >= 24);
    for i in 0..rl.len() {
        rl.example(i).unwrap();
    }
}


#[test]
fn sharded_loaders_split_each_global_batch_in_order() {
    let lines: Vec<String> = (0..11).map(|i| json!({"text": format!("t{i}")}).to_string()).collect();
    let (_dir, path) = write_file(&lines);
    let opts = LoaderOptions { epochs: 1, ..LoaderOptions::new(4) }; // shuffled, global batch 4
    let open = || PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(8)).unwrap();
    let whole: Vec<_> = Loader::new(open(), opts).unwrap().map(|b| b.unwrap()).collect();
    let ranks: Vec<Vec<_>> =
        (0..3).map(|r| Loader::new(open(), opts).unwrap().shard(r, 3).map(|b| b.unwrap()).collect()).collect();
    assert_eq!(whole.len(), 3); // 4 + 4 + 3 samples
    for (step, (info, batch)) in whole.iter().enumerate() {
        let mut joined = Vec::new();
        for rank in &ranks {
            let (rinfo, rbatch) = &rank[step];
            assert_eq!((rinfo.start, rinfo.end, rinfo.step), (info.start, info.end, info.step));
            assert!(!rinfo.stand_in);
            joined.extend(rbatch.lines.iter().copied());
        }
        assert_eq!(joined, batch.lines, "step {step}: the shards are the global batch, in order");
    }
    // More ranks than rows in the short last batch: the empty shard gets a stand-in row.
    let last: Vec<_> = (0..4).map(|r| Loader::new(open(), opts).unwrap().shard(r, 4).map(|b| b.unwrap()).last().unwrap()).collect();
    assert_eq!(last.iter().filter(|(info, _)| info.stand_in).count(), 1);
    assert!(last.iter().all(|(_, b)| b.rows == 1));
    assert_eq!(crate::shard_of(3, 0, 4), (0, 0));
}

#[test]
fn prefetch_yields_the_loader_batches_and_states_in_order() {
    let lines: Vec<String> = (0..9).map(|i| json!({"text": format!("t{i}")}).to_string()).collect();
    let (_dir, path) = write_file(&lines);
    let opts = LoaderOptions { epochs: 2, ..LoaderOptions::new(4) };
    let open = || PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(8)).unwrap();
    let mut plain = Loader::new(open(), opts).unwrap();
    let mut ahead = crate::Prefetch::new(Loader::new(open(), opts).unwrap(), 2);
    let mut count = 0;
    while let Some((info, batch)) = plain.next_batch().unwrap() {
        let (pinfo, pbatch) = ahead.next_batch().unwrap().unwrap();
        assert_eq!((pinfo.start, pinfo.end, pinfo.step), (info.start, info.end, info.step));
        assert_eq!(pbatch.lines, batch.lines);
        assert_eq!(ahead.state(), plain.state(), "the state is the one after this batch, not after the read-ahead");
        assert_eq!(ahead.finished(), plain.finished());
        count += 1;
    }
    assert_eq!(count, 6);
    assert!(ahead.next_batch().unwrap().is_none());
    // Dropped with batches still queued: the worker stops instead of blocking.
    let mut early = crate::Prefetch::new(Loader::new(open(), opts).unwrap(), 1);
    early.next_batch().unwrap().unwrap();
    drop(early);
}

#[test]
fn an_over_long_line_is_a_bad_line_and_never_held_whole() {
    let long = json!({"text": "x".repeat(MAX_LINE_BYTES)}).to_string();
    let lines = vec![json!({"text": "ok"}).to_string(), long, json!({"text": "after"}).to_string()];
    let (_dir, path) = write_file(&lines);
    let err = PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(8)).err().unwrap();
    let le = line_error(&err);
    assert_eq!(le.line, 2);
    assert!(le.message.contains("longer than 1048576 bytes"), "{}", le.message);
    // Skipped, the lines around it keep their numbers and bytes.
    let ds = PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(8).skip_bad_lines(true)).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.index().skipped_lines(), &[2]);
    assert_eq!(ds.index().line_number(1), 3);
    assert_eq!(ds.index().read_json(1).unwrap()["text"], "after");
    // A line of exactly the limit is fine.
    let exact = format!("{{\"text\": \"{}\"}}", "y".repeat(MAX_LINE_BYTES - 12));
    assert_eq!(exact.len(), MAX_LINE_BYTES);
    let (_d, p) = write_file(&[exact]);
    assert_eq!(PretrainDataset::open(&p, Fake::plain(), DatasetOptions::new(8)).unwrap().len(), 1);
}

#[test]
#[cfg(unix)]
fn devices_are_not_training_data() {
    let err = PretrainDataset::open(std::path::Path::new("/dev/zero"), Fake::plain(), DatasetOptions::new(8)).err().unwrap();
    assert!(err.to_string().contains("/dev/zero: not a regular file"), "{err}");
}

#[test]
fn huge_lengths_and_batches_are_refused_up_front() {
    let (_dir, path) = write_file(&pretrain_lines(3));
    let err = PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(1_000_000_000)).err().unwrap();
    assert!(err.to_string().contains("max_length 1000000000 exceeds"), "{err}");
    assert!(check_micro_batch(1_000_000_000, 512).unwrap_err().to_string().contains("micro-batch"));
    assert!(check_micro_batch(usize::MAX, 512).is_err());
    assert!(check_micro_batch(32, 512).is_ok());
    // A batch larger than the file allocates only what the file has.
    let ds = PretrainDataset::open(&path, Fake::plain(), DatasetOptions::new(8)).unwrap();
    let mut loader = Loader::new(ds, LoaderOptions { shuffle: false, ..LoaderOptions::new(1 << 40) }).unwrap();
    assert_eq!(loader.next_batch().unwrap().unwrap().1.rows, 3);
}
