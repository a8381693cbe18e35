//! `GET /metrics`: the server's counters in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64, times: u64) {
        for (i, &le) in BUCKETS.iter().enumerate() {
            if seconds <= le {
                self.counts[i] += times;
            }
        }
        self.count += times;
        self.sum += seconds * times as f64;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (le, n) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", self.count, self.sum, self.count);
    }
}

#[derive(Default)]
pub struct Metrics {
    /// (endpoint, HTTP status) → requests.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub queue_depth: AtomicUsize,
    /// Sequences in the decoding batch.
    pub active: AtomicUsize,
    /// Requests whose client went away before they finished.
    pub cancelled: AtomicU64,
    time_to_first_token: Mutex<Histogram>,
    time_per_output_token: Mutex<Histogram>,
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    /// Tokens a finished request read and wrote.
    pub fn tokens(&self, prompt: usize, generated: usize) {
        self.prompt_tokens.fetch_add(prompt as u64, Ordering::Relaxed);
        self.generation_tokens.fetch_add(generated as u64, Ordering::Relaxed);
    }

    pub fn first_token(&self, seconds: f64) {
        self.time_to_first_token.lock().unwrap_or_else(|e| e.into_inner()).observe(seconds, 1);
    }

    /// A decode step of `sequences` rows took `seconds`: each of them waited that long for
    /// its token.
    pub fn step(&self, sequences: usize, seconds: f64) {
        self.time_per_output_token.lock().unwrap_or_else(|e| e.into_inner()).observe(seconds, sequences as u64);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP mm_requests_total HTTP requests by endpoint and status.\n# TYPE mm_requests_total counter\n");
        for ((endpoint, status), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "mm_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        let counters = [
            ("mm_prompt_tokens_total", "Prompt tokens processed.", self.prompt_tokens.load(Ordering::Relaxed)),
            ("mm_generation_tokens_total", "Tokens generated.", self.generation_tokens.load(Ordering::Relaxed)),
            ("mm_requests_cancelled_total", "Requests whose client disconnected before the end.", self.cancelled.load(Ordering::Relaxed)),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let gauges = [
            ("mm_queue_depth", "Requests waiting for a batch slot.", self.queue_depth.load(Ordering::Relaxed)),
            ("mm_active_sequences", "Sequences in the decoding batch.", self.active.load(Ordering::Relaxed)),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.time_to_first_token.lock().unwrap_or_else(|e| e.into_inner()).render(
            "mm_time_to_first_token_seconds",
            "From request arrival to its first generated token.",
            &mut out,
        );
        self.time_per_output_token.lock().unwrap_or_else(|e| e.into_inner()).render(
            "mm_time_per_output_token_seconds",
            "Decode step time seen by each sequence in the step.",
            &mut out,
        );
        out
    }
}
