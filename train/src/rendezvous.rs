//! Joining a launch that torchrun or Slurm started: each process learns its place from the
//! standard environment and the ranks meet at the master over TCP, where rank 0 hands every
//! other rank the NCCL unique id (an opaque string here). No protocol of mm's own beyond one
//! line each way: a rank sends `mm-rendezvous 1 <rank> <world>\n`, the master answers
//! `ok <id>\n` or `error <reason>\n`.
//!
//! torchrun sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; under Slurm
//! (`srun`) `SLURM_PROCID`, `SLURM_NTASKS` and `SLURM_LOCALID` give the rank, world and local
//! rank, and `MASTER_ADDR` (with `MASTER_PORT`, default 29500) must be exported by the batch
//! script, as for torchrun under Slurm. Under torchrun, whose agent may already listen on
//! `MASTER_PORT`, mm's rank 0 listens on `MASTER_PORT + 1`; `MM_RENDEZVOUS_PORT` overrides both.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// torchrun's default master port.
pub const DEFAULT_MASTER_PORT: u16 = 29500;
const HELLO: &str = "mm-rendezvous 1";
/// The longest line either side reads (an NCCL id is 256 hex digits): a peer that sends more
/// is not a rank.
const MAX_LINE: u64 = 4096;

/// One `\n`-terminated line of at most [`MAX_LINE`] bytes.
fn read_line(stream: &TcpStream) -> Result<String> {
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream, MAX_LINE)).read_line(&mut line)?;
    ensure!(line.ends_with('\n'), "no complete line within {MAX_LINE} bytes");
    Ok(line)
}

/// What [`LaunchEnv::join`] leaves: rank 0's id and the open connections.
pub struct Joined {
    pub id: String,
    /// Rank 0: the streams of ranks 1..world in order; another rank: its stream to rank 0.
    pub streams: Vec<TcpStream>,
}

/// This process's place in a multi-process launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: usize,
    pub world: usize,
    /// Which of this node's GPUs the rank uses.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// `torchrun` or `slurm`, for messages.
    pub launcher: &'static str,
}

/// Reads the launcher's variables through `var` (the process environment in use); `None`
/// when neither torchrun's nor Slurm's are set.
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<LaunchEnv>> {
    let number = |key: &str| -> Result<Option<usize>> {
        match var(key) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| anyhow::anyhow!("{key}={v:?} is not a number")),
        }
    };
    let (launcher, rank, world, local) = if var("RANK").is_some() || var("WORLD_SIZE").is_some() {
        let rank = number("RANK")?.context("WORLD_SIZE is set but RANK is not (torchrun sets both)")?;
        let world = number("WORLD_SIZE")?.context("RANK is set but WORLD_SIZE is not (torchrun sets both)")?;
        ("torchrun", rank, world, number("LOCAL_RANK")?.unwrap_or(0))
    } else if var("SLURM_PROCID").is_some() {
        let rank = number("SLURM_PROCID")?.context("SLURM_PROCID")?;
        let world = number("SLURM_NTASKS")?.context("SLURM_PROCID is set but SLURM_NTASKS is not (run under srun)")?;
        ("slurm", rank, world, number("SLURM_LOCALID")?.unwrap_or(0))
    } else {
        return Ok(None);
    };
    ensure!(world > 0 && rank < world, "{launcher}: rank {rank} does not fit a world of {world}");
    if world == 1 {
        // One process (a plain Slurm job step, `torchrun --nproc_per_node 1`): nothing to join.
        return Ok(None);
    }
    let master_addr = var("MASTER_ADDR").filter(|a| !a.trim().is_empty()).with_context(|| {
        format!("{launcher}: MASTER_ADDR is not set (the host rank 0 runs on; export it in the batch script)")
    })?;
    let port = |key: &str, v: String| -> Result<u16> { v.trim().parse().map_err(|_| anyhow::anyhow!("{key}={v:?} is not a port number")) };
    let master_port = match (var("MM_RENDEZVOUS_PORT"), var("MASTER_PORT")) {
        (Some(p), _) => port("MM_RENDEZVOUS_PORT", p)?,
        // torchrun's agent may host its own store on MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE):
        // mm's rank 0 listens on the next port.
        (None, Some(p)) if launcher == "torchrun" => port("MASTER_PORT", p)?.checked_add(1).context("MASTER_PORT 65535 leaves no port for mm's rendezvous")?,
        (None, Some(p)) => port("MASTER_PORT", p)?,
        (None, None) => DEFAULT_MASTER_PORT,
    };
    Ok(Some(LaunchEnv { rank, world, local_rank: local, master_addr: master_addr.trim().to_string(), master_port, launcher }))
}

impl LaunchEnv {
    fn master(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }

    /// Rank 0: listens at the master address, waits for every other rank's hello and gives
    /// each the id. Other ranks: connect (retrying until `timeout`) and receive the id.
    pub fn exchange(&self, id: Option<&str>, timeout: Duration) -> Result<String> {
        Ok(self.join(id, timeout)?.id)
    }

    /// [`exchange`](Self::exchange), keeping the connections: rank 0 holds one stream per
    /// other rank (in rank order), every other rank its stream to rank 0. The CPU backend of
    /// data parallelism sums over them ([`crate::tcp_group`]).
    pub fn join(&self, id: Option<&str>, timeout: Duration) -> Result<Joined> {
        if self.rank == 0 {
            let id = id.context("rank 0 must provide the id")?;
            ensure!(!id.contains('\n'), "the id must be one line");
            let streams = self.serve(id, timeout)?;
            Ok(Joined { id: id.to_string(), streams })
        } else {
            let (id, stream) = self.fetch(timeout)?;
            Ok(Joined { id, streams: vec![stream] })
        }
    }

    fn serve(&self, id: &str, timeout: Duration) -> Result<Vec<TcpStream>> {
        let listener = TcpListener::bind(self.master())
            .with_context(|| format!("rank 0 cannot listen at MASTER_ADDR:MASTER_PORT = {} (is it this host's address, and the port free?)", self.master()))?;
        listener.set_nonblocking(true)?;
        let started = Instant::now();
        let mut joined: Vec<Option<TcpStream>> = (0..self.world).map(|_| None).collect();
        let mut arrived = vec![false; self.world];
        arrived[0] = true;
        while arrived.iter().any(|j| !j) {
            if started.elapsed() > timeout {
                let missing: Vec<String> = arrived.iter().enumerate().filter(|(_, j)| !**j).map(|(r, _)| r.to_string()).collect();
                bail!(
                    "rendezvous at {}: rank(s) {} of {} did not arrive within {:.0} s",
                    self.master(),
                    missing.join(", "),
                    self.world,
                    timeout.as_secs_f64()
                );
            }
            match listener.accept() {
                Ok((stream, peer)) => {
                    stream.set_nonblocking(false)?;
                    if let Some((rank, stream)) = self.greet(stream, id, &arrived).with_context(|| format!("rendezvous: a rank from {peer}"))? {
                        arrived[rank] = true;
                        joined[rank] = Some(stream);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(e).context("rendezvous: accepting a rank"),
            }
        }
        Ok(joined.into_iter().flatten().collect())
    }

    /// Reads one hello and answers it; the rank that joined, or None for a rejected one
    /// (whose sender gets the reason).
    fn greet(&self, stream: TcpStream, id: &str, joined: &[bool]) -> Result<Option<(usize, TcpStream)>> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let line = read_line(&stream).unwrap_or_default();
        let mut writer = stream;
        let fields: Vec<&str> = line.trim().strip_prefix(HELLO).map(|r| r.split_whitespace().collect()).unwrap_or_default();
        let parsed = match fields.as_slice() {
            [r, w] => r.parse::<usize>().ok().zip(w.parse::<usize>().ok()),
            _ => None,
        };
        let reply = match parsed {
            None => Err(format!("not a rendezvous hello: {:?}", line.trim())),
            Some((_, w)) if w != self.world => Err(format!("world size {w}, the master's is {}", self.world)),
            Some((r, _)) if r == 0 || r >= self.world => Err(format!("rank {r} is not one of 1..{}", self.world - 1)),
            Some((r, _)) if joined[r] => Err(format!("rank {r} arrived twice")),
            Some((r, _)) => Ok(r),
        };
        match reply {
            Ok(r) => {
                writer.write_all(format!("ok {id}\n").as_bytes())?;
                Ok(Some((r, writer)))
            }
            Err(reason) => {
                let _ = writer.write_all(format!("error {reason}\n").as_bytes());
                Ok(None)
            }
        }
    }

    fn fetch(&self, timeout: Duration) -> Result<(String, TcpStream)> {
        let started = Instant::now();
        let addrs: Vec<_> = self
            .master()
            .to_socket_addrs()
            .with_context(|| format!("rendezvous: MASTER_ADDR {:?} does not resolve", self.master_addr))?
            .collect();
        let mut last_error = None;
        let stream = loop {
            match addrs.iter().find_map(|a| TcpStream::connect_timeout(a, Duration::from_millis(500)).map_err(|e| last_error = Some(e)).ok()) {
                Some(s) => break s,
                None if started.elapsed() > timeout => bail!(
                    "rank {}: cannot reach the master at {} within {:.0} s ({}); is rank 0 running and MASTER_ADDR/MASTER_PORT right?",
                    self.rank,
                    self.master(),
                    timeout.as_secs_f64(),
                    last_error.map_or_else(|| "no address".into(), |e| e.to_string())
                ),
                None => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let remaining = timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        stream.set_read_timeout(Some(remaining))?;
        (&stream).write_all(format!("{HELLO} {} {}\n", self.rank, self.world).as_bytes())?;
        let line = read_line(&stream).with_context(|| format!("rank {}: no answer from the master at {}", self.rank, self.master()))?;
        let line = line.trim_end();
        if let Some(id) = line.strip_prefix("ok ") {
            return Ok((id.to_string(), stream));
        }
        match line.strip_prefix("error ") {
            Some(reason) => bail!("rank {}: the master at {} refused it: {reason}", self.rank, self.master()),
            None => bail!("rank {}: the master at {} answered {line:?}", self.rank, self.master()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn rank(rank: usize, world: usize, port: u16) -> LaunchEnv {
        LaunchEnv { rank, world, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port, launcher: "torchrun" }
    }

    #[test]
    fn torchrun_and_slurm_variables() {
        let t = from_env(env(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "1234")])).unwrap().unwrap();
        assert_eq!((t.rank, t.world, t.local_rank, t.master_addr.as_str(), t.master_port, t.launcher), (3, 8, 1, "node0", 1235, "torchrun"));
        let o = from_env(env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "n"), ("MASTER_PORT", "1234"), ("MM_RENDEZVOUS_PORT", "4000")])).unwrap().unwrap();
        assert_eq!(o.master_port, 4000);
        let s = from_env(env(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1"), ("MASTER_ADDR", "node1")])).unwrap().unwrap();
        assert_eq!((s.rank, s.world, s.local_rank, s.master_port, s.launcher), (5, 8, 1, DEFAULT_MASTER_PORT, "slurm"));
        assert!(from_env(env(&[])).unwrap().is_none());
        assert!(from_env(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")])).unwrap().is_none(), "a one-task job needs no master");
        let err = |pairs: &[(&str, &str)]| format!("{:#}", from_env(env(pairs)).unwrap_err());
        assert!(err(&[("RANK", "1"), ("WORLD_SIZE", "2")]).contains("MASTER_ADDR is not set"));
        assert!(err(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")]).contains("rank 2 does not fit a world of 2"));
        assert!(err(&[("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")]).contains("RANK is not"));
        assert!(err(&[("RANK", "x"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")]).contains("RANK=\"x\" is not a number"));
        assert!(err(&[("SLURM_PROCID", "0"), ("MASTER_ADDR", "a")]).contains("SLURM_NTASKS"));
        assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "99999")]).contains("not a port number"));
    }

    #[test]
    fn every_rank_gets_rank_zeros_id() {
        let port = free_port();
        let world = 4;
        let handles: Vec<_> = (0..world)
            .map(|r| std::thread::spawn(move || rank(r, world, port).exchange((r == 0).then_some("nccl-id-0123abcd"), Duration::from_secs(20))))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), "nccl-id-0123abcd");
        }
    }

    #[test]
    fn a_missing_rank_times_out_naming_it() {
        let port = free_port();
        let master = std::thread::spawn(move || rank(0, 3, port).exchange(Some("id"), Duration::from_millis(1500)));
        let one = rank(1, 3, port).exchange(None, Duration::from_secs(10)).unwrap();
        assert_eq!(one, "id");
        let err = format!("{:#}", master.join().unwrap().unwrap_err());
        assert!(err.contains("rank(s) 2 of 3 did not arrive"), "{err}");
    }

    #[test]
    fn wrong_address_wrong_world_and_duplicates_are_clear() {
        // Nothing listens there: the rank gives up, naming the address.
        let port = free_port();
        let err = format!("{:#}", rank(1, 2, port).exchange(None, Duration::from_millis(800)).unwrap_err());
        assert!(err.contains(&format!("cannot reach the master at 127.0.0.1:{port}")), "{err}");
        // A name that does not resolve.
        let bad = LaunchEnv { master_addr: "no-such-host.invalid".into(), ..rank(1, 2, port) };
        let err = format!("{:#}", bad.exchange(None, Duration::from_millis(500)).unwrap_err());
        assert!(err.contains("does not resolve"), "{err}");
        // A rank of another world size, and the same rank twice, are refused with the reason.
        let port = free_port();
        let master = std::thread::spawn(move || rank(0, 3, port).exchange(Some("id"), Duration::from_secs(3)));
        std::thread::sleep(Duration::from_millis(200));
        let err = format!("{:#}", rank(1, 4, port).exchange(None, Duration::from_secs(5)).unwrap_err());
        assert!(err.contains("world size 4, the master's is 3"), "{err}");
        assert_eq!(rank(1, 3, port).exchange(None, Duration::from_secs(5)).unwrap(), "id");
        let err = format!("{:#}", rank(1, 3, port).exchange(None, Duration::from_secs(5)).unwrap_err());
        assert!(err.contains("rank 1 arrived twice"), "{err}");
        // An endless line is cut at MAX_LINE and refused (the answer may be lost to the reset
        // of a socket closed with unread data), and the master goes on waiting for rank 2.
        let mut flood = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = flood.write_all(&vec![b'x'; 64 << 10]);
        let mut answer = String::new();
        if BufReader::new(flood).read_line(&mut answer).is_ok() && !answer.is_empty() {
            assert!(answer.starts_with("error not a rendezvous hello"), "{answer}");
        }
        assert_eq!(rank(2, 3, port).exchange(None, Duration::from_secs(5)).unwrap(), "id");
        master.join().unwrap().unwrap();
    }
}
