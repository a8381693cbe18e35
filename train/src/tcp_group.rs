//! Sums over the ranks of a CPU run, through rank 0 over the rendezvous connections (the
//! part torch's gloo backend plays for `torchrun` on CPUs). Each call: every other rank sends
//! `u64 count` (little-endian) then `count` f32s; rank 0 adds them to its own in rank order
//! and sends the sum back the same way. Rank order makes the sum, and so every rank's copy of
//! the weights, bit-identical.
//!
//! Gradients of a tiny model are a few MB a step, so a star through rank 0 costs little
//! next to a CPU step; GPUs use NCCL.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

/// This process's connections in a CPU data-parallel run.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    /// Rank 0: ranks 1..world in order; another rank: its stream to rank 0.
    streams: Vec<TcpStream>,
}

impl TcpGroup {
    /// `streams` as [`crate::rendezvous::Joined`] leaves them. A peer silent for `timeout`
    /// in the middle of a sum is an error (a peer that exits closes its stream at once).
    pub fn new(rank: usize, world: usize, streams: Vec<TcpStream>, timeout: Duration) -> Result<Self> {
        let expected = if rank == 0 { world - 1 } else { 1 };
        ensure!(streams.len() == expected, "rank {rank} of {world}: {} connections, expected {expected}", streams.len());
        for s in &streams {
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            s.set_nodelay(true)?;
        }
        Ok(Self { rank, world, streams })
    }

    /// Σ over the ranks of `values`, element-wise; every rank passes the same length.
    pub fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
        if self.rank == 0 {
            let mut incoming = vec![0f32; values.len()];
            for (i, mut s) in self.streams.iter().enumerate() {
                let peer = i + 1;
                read_values(&mut s, &mut incoming).with_context(|| format!("summing over {} ranks: reading rank {peer}", self.world))?;
                values.iter_mut().zip(&incoming).for_each(|(v, x)| *v += x);
            }
            for (i, mut s) in self.streams.iter().enumerate() {
                write_values(&mut s, values).with_context(|| format!("summing over {} ranks: answering rank {}", self.world, i + 1))?;
            }
        } else {
            let mut s = &self.streams[0];
            write_values(&mut s, values).with_context(|| format!("rank {}: sending to rank 0", self.rank))?;
            read_values(&mut s, values).with_context(|| format!("rank {}: reading the sum from rank 0", self.rank))?;
        }
        Ok(())
    }
}

fn write_values(s: &mut impl Write, values: &[f32]) -> Result<()> {
    let mut buf = Vec::with_capacity(8 + values.len() * 4);
    buf.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for v in values {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&buf).map_err(closed)?;
    Ok(())
}

/// Reads one message into `out`, whose length the peer's count must equal (the count only
/// checks; it never sizes a buffer).
fn read_values(s: &mut impl Read, out: &mut [f32]) -> Result<()> {
    let mut head = [0u8; 8];
    s.read_exact(&mut head).map_err(closed)?;
    let count = u64::from_le_bytes(head);
    if count != out.len() as u64 {
        bail!("the peer sent {count} values, this rank has {} (the ranks are not running the same step)", out.len());
    }
    let mut chunk = vec![0u8; 1 << 16];
    let mut at = 0;
    while at < out.len() {
        let n = (out.len() - at).min(chunk.len() / 4);
        s.read_exact(&mut chunk[..n * 4]).map_err(closed)?;
        for (o, b) in out[at..at + n].iter_mut().zip(chunk.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        at += n;
    }
    Ok(())
}

fn closed(e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
            anyhow::anyhow!("the peer closed the connection (did that rank fail?)")
        }
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => anyhow::anyhow!("the peer sent nothing within the timeout ({e})"),
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rendezvous::LaunchEnv;

    fn group(rank: usize, world: usize, port: u16) -> Result<TcpGroup> {
        let env = LaunchEnv { rank, world, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port, launcher: "torchrun" };
        let joined = env.join((rank == 0).then_some("cpu"), Duration::from_secs(20))?;
        TcpGroup::new(rank, world, joined.streams, Duration::from_secs(20))
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn every_rank_gets_the_same_sum_in_rank_order() {
        let port = free_port();
        let world = 3;
        let handles: Vec<_> = (0..world)
            .map(|r| {
                std::thread::spawn(move || {
                    let g = group(r, world, port).unwrap();
                    // Large enough to span several chunks and socket buffers.
                    let mut v: Vec<f32> = (0..100_000).map(|i| (i as f32) * 0.5 + r as f32 * 1e-3).collect();
                    g.all_reduce_sum(&mut v).unwrap();
                    let mut w = vec![r as f32 + 1.0; 3];
                    g.all_reduce_sum(&mut w).unwrap();
                    (v, w)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let expected: Vec<f32> = (0..100_000).map(|i| ((i as f32) * 0.5 + 0.0) + ((i as f32) * 0.5 + 1e-3) + ((i as f32) * 0.5 + 2e-3)).collect();
        for (v, w) in &results {
            assert_eq!(v, &expected, "bit-identical on every rank, summed in rank order");
            assert_eq!(w, &vec![6.0; 3]);
        }
    }

    #[test]
    fn a_mismatched_length_or_a_dead_peer_is_an_error() {
        let port = free_port();
        let master = std::thread::spawn(move || {
            let g = group(0, 2, port).unwrap();
            let mut v = vec![1f32; 4];
            g.all_reduce_sum(&mut v).map_err(|e| format!("{e:#}"))
        });
        let g = group(1, 2, port).unwrap();
        let mut v = vec![1f32; 5];
        // The master refuses the count and stops answering; this rank then sees it gone.
        let mine = g.all_reduce_sum(&mut v);
        let first = master.join().unwrap();
        assert!(first.unwrap_err().contains("the peer sent 5 values, this rank has 4"));
        assert!(format!("{:#}", mine.unwrap_err()).contains("closed the connection"));

        let port = free_port();
        let master = std::thread::spawn(move || {
            let g = group(0, 2, port).unwrap();
            let mut v = vec![1f32; 4];
            g.all_reduce_sum(&mut v).map_err(|e| format!("{e:#}"))
        });
        drop(group(1, 2, port).unwrap());
        let err = master.join().unwrap().unwrap_err();
        assert!(err.contains("reading rank 1") && err.contains("closed the connection"), "{err}");
    }
}
