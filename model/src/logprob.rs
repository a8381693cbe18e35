//! Log-probabilities from a row of logits, shared by the server (`logprobs`, `echo`) and
//! evaluation (log-likelihoods): the maximum, then Σ exp(x − max) in f64.

/// The row's maximum (first index of it, as torch's `argmax`) and Σ exp(x − max) in f64.
fn max_and_sum(row: &[f32]) -> (f32, usize, f64) {
    let (mut max, mut argmax) = (f32::NEG_INFINITY, 0);
    for (i, &x) in row.iter().enumerate() {
        if x > max {
            (max, argmax) = (x, i);
        }
    }
    (max, argmax, row.iter().map(|&x| ((x - max) as f64).exp()).sum())
}

/// `log_softmax` of one row, in f32 (the sum in f64).
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let (max, _, sum) = max_and_sum(row);
    let log_sum = sum.ln() as f32 + max;
    row.iter().map(|&x| x - log_sum).collect()
}

/// `log_softmax(row)[token]` in f64, and whether `token` is the row's argmax.
pub fn token_logprob(row: &[f32], token: u32) -> (f64, bool) {
    let (max, argmax, sum) = max_and_sum(row);
    (row[token as usize] as f64 - max as f64 - sum.ln(), argmax == token as usize)
}
