//! `mm chat` at the keyboard: Ctrl-C stops the reply under way and the chat goes on with the
//! next line; Ctrl-C at the prompt ends it; on a terminal, what is typed during a reply is
//! neither echoed into it nor taken as the next message.

#![cfg(unix)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn mm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mm"))
}

/// A one-layer random model: it babbles until --max-new-tokens.
fn tiny_model(dir: &Path) -> String {
    let out = mm().args(["init", "--preset", "tiny", "--layers", "1", "-o"]).arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.to_str().unwrap().to_string()
}

/// Collects a child's output stream on a thread.
fn collect(mut stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stream.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// Waits up to a minute for `cond` on (stdout, stderr).
fn wait_for(what: &str, out: &Arc<Mutex<Vec<u8>>>, err: &Arc<Mutex<Vec<u8>>>, cond: impl Fn(&str, &str) -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if cond(&text(out), &text(err)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}\nstdout: {}\nstderr: {}", text(out), text(err));
}

fn interrupt(child: &Child) {
    // SAFETY: sends SIGINT to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("mm chat did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_stops_the_reply_and_the_chat_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("tiny"));
    let mut child = mm()
        // One message of history: each reply depends only on its own line (init and sampling
        // are seeded), so none ends early by chance.
        .args(["chat", &model, "--max-new-tokens", "100000", "--history", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, err) = (collect(child.stdout.take().unwrap()), collect(child.stderr.take().unwrap()));
    let mut stdin = child.stdin.take().unwrap();
    let stopped = |e: &str| e.matches("(reply stopped)").count();
    for (turn, line) in ["hello", "tell me more"].into_iter().enumerate() {
        let before = text(&out).len();
        writeln!(stdin, "{line}").unwrap();
        // The reply is streaming: well past the prompt.
        wait_for("a long reply", &out, &err, |o, _| o.len() > before + 200);
        interrupt(&child);
        wait_for("the reply to stop and the next prompt", &out, &err, |o, e| stopped(e) == turn + 1 && o.ends_with("\n> "));
        assert!(child.try_wait().unwrap().is_none(), "Ctrl-C during a reply ended the chat:\n{}", text(&err));
    }
    drop(stdin); // Ctrl-D
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status}: {}", text(&err));
    assert_eq!(stopped(&text(&err)), 2);

    // Ctrl-C at the prompt ends the chat.
    let mut child = mm().args(["chat", &model]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (out, err) = (collect(child.stdout.take().unwrap()), collect(child.stderr.take().unwrap()));
    let _stdin = child.stdin.take().unwrap();
    wait_for("the first prompt", &out, &err, |o, _| o == "> ");
    interrupt(&child);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(130), "{}", text(&err));
}

/// Runs `mm chat` on a pseudo-terminal through util-linux `script`, typing into it.
#[test]
fn typing_during_a_reply_is_not_echoed_and_is_discarded() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping typing_during_a_reply_is_not_echoed_and_is_discarded: util-linux `script` not found");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("tiny"));
    // `exec`: under a shell that forks instead (dash, when $SHELL is /bin/sh), the shell would
    // share mm's foreground process group, die of the Ctrl-C and make `script -e` report 130.
    let cmd = format!("exec {} chat {model} --max-new-tokens 100000", env!("CARGO_BIN_EXE_mm"));
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, err) = (collect(child.stdout.take().unwrap()), collect(child.stderr.take().unwrap()));
    let mut keys = child.stdin.take().unwrap();
    let mut type_keys = |s: &str| {
        keys.write_all(s.as_bytes()).unwrap();
        keys.flush().unwrap();
    };
    wait_for("the first prompt", &out, &err, |o, _| o.ends_with("> "));
    type_keys("hello\n");
    wait_for("the message echoed and a long reply", &out, &err, |o, _| {
        o.find("hello").is_some_and(|at| o.len() > at + 300)
    });
    type_keys("typed-during-the-reply\n");
    std::thread::sleep(Duration::from_millis(500));
    type_keys("\x03"); // Ctrl-C: the terminal sends SIGINT to mm
    wait_for("the reply to stop and the next prompt", &out, &err, |o, _| o.contains("(reply stopped)") && o.ends_with("> "));
    // What was typed during the reply is not the next message: mm waits at the prompt.
    let at_prompt = text(&out);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(text(&out), at_prompt, "a reply started without a new message");
    type_keys("/exit\n");
    let status = wait_exit(&mut child);
    let screen = text(&out);
    assert!(status.success(), "{status}: {screen}");
    assert!(!screen.contains("typed-during"), "input typed during the reply reached the screen:\n{screen}");
    assert!(screen.contains("/exit"), "echo is back on at the prompt:\n{screen}");
}
