//! The HTTP API under attack (nginx, Debian's package, with a private configuration) and its
//! legitimate client (wrk, closed loop over keep-alive connections).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use super::lab::{Lab, SERVER_ADDR, SERVER_ADDR_V6};
use crate::netns::Netns;

/// The API's one endpoint: a small JSON answer, as a health or status call would return.
pub const API_PATH: &str = "/api";
/// Concurrent keep-alive connections of the client.
pub const CONNECTIONS: usize = 32;

/// nginx in the server namespace, one worker pinned to the server's CPU; stopped on drop.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

/// `ip netns exec NS taskset -c CPU nice -n -19 PROGRAM`: pinned, and at a priority that keeps
/// the rest of the machine's load from skewing one case more than another.
pub fn pinned(netns: &Netns, cpu: usize, program: &str) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", netns.name(), "taskset", "-c"])
        .arg(cpu.to_string())
        .args(["nice", "-n", "-19", program]);
    command
}

impl Nginx {
    /// Writes the configuration into `dir` and starts nginx in the foreground (`daemon off`),
    /// listening only on the server's addresses (IPv6 too in a dual-stack lab); waits until it
    /// accepts connections.
    pub fn start(lab: &Lab, dir: &Path, cpu: usize) -> anyhow::Result<Self> {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let listen_v6 = if lab.ipv6 {
            format!("listen [{SERVER_ADDR_V6}]:80 backlog=4096;\n    ")
        } else {
            String::new()
        };
        let config = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             keepalive_requests 10000000;\n  \
             server {{\n    listen {SERVER_ADDR}:80 backlog=4096;\n    {listen_v6}\
             default_type application/json;\n    \
             location {API_PATH} {{ return 200 '{{\"ok\":true}}'; }}\n  }}\n}}\n"
        );
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config)?;
        let mut command = pinned(&lab.server, cpu, "nginx");
        command
            .arg("-c")
            .arg(&config_path)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log"))?);
        // Its own process group: the master and its worker are stopped together.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().context("start nginx")?;
        let mut nginx = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = lab.client.enter(|| {
                std::net::TcpStream::connect_timeout(
                    &(SERVER_ADDR, 80).into(),
                    Duration::from_millis(200),
                )
                .is_ok()
            });
            if up {
                return Ok(nginx);
            }
            if let Some(status) = nginx.child.try_wait()? {
                bail!("nginx exited with {status}: {}", nginx.log());
            }
            ensure!(
                Instant::now() < deadline,
                "nginx does not answer within 10 s: {}",
                nginx.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|name| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        let group = nix::unistd::Pid::from_raw(-pid);
        // SIGTERM: nginx's fast shutdown; the whole group, so no worker outlives the test.
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// What one wrk run measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// Completed requests.
    pub requests: u64,
    /// Seconds wrk measured over.
    pub seconds: f64,
    /// Responses that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts.
    pub errors: u64,
    /// 99th percentile of the request latency, milliseconds (completed requests only).
    pub p99_ms: f64,
}

impl Load {
    /// Successful responses per second.
    pub fn goodput(&self) -> f64 {
        self.requests.saturating_sub(self.non_2xx) as f64 / self.seconds.max(1e-9)
    }
}

/// `1.23ms`, `456.00us`, `2.00s`, `1.50m` as milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(value * scale)
}

/// Parses wrk's report (`--latency`).
pub fn parse_wrk(text: &str) -> anyhow::Result<Load> {
    let mut load = Load::default();
    let mut have_total = false;
    let mut have_p99 = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // "123 requests in 5.00s, 1.23MB read"
            [count, "requests", "in", seconds, ..] => {
                load.requests = count.parse().context("request count")?;
                load.seconds =
                    duration_ms(seconds.trim_end_matches(',')).context("run time")? / 1e3;
                have_total = true;
            }
            ["99%", value] => {
                load.p99_ms = duration_ms(value).context("p99")?;
                have_p99 = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                load.non_2xx = count.parse().context("non-2xx count")?;
            }
            // "Socket errors: connect 0, read 0, write 0, timeout 12"
            ["Socket", "errors:", rest @ ..] => {
                load.errors = rest
                    .iter()
                    .filter_map(|word| word.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    ensure!(
        have_total,
        "no `N requests in T` line in wrk's output:\n{text}"
    );
    if !have_p99 {
        // No request completed: no distribution.
        ensure!(load.requests == 0, "no 99% line in wrk's output:\n{text}");
        load.p99_ms = f64::NAN;
    }
    Ok(load)
}

/// Runs wrk for `seconds` from the client namespace, pinned to `cpu`, against nginx at `server`
/// (an address of the server's).
pub fn run_wrk(lab: &Lab, cpu: usize, seconds: u64, server: IpAddr) -> anyhow::Result<Load> {
    let output = pinned(&lab.client, cpu, "wrk")
        .args(["-t1", "-c"])
        .arg(CONNECTIONS.to_string())
        .arg(format!("-d{seconds}s"))
        .args(["--timeout", "2s", "--latency"])
        .arg(format!("http://{}{API_PATH}", SocketAddr::new(server, 80)))
        .stdin(Stdio::null())
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "wrk failed ({}): {}{}",
        output.status,
        text,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_wrk(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 4s test @ http://192.0.2.1/api
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.74ms    2.23ms  22.32ms   85.16%
    Req/Sec    30.34k     5.09k   39.49k    62.50%
  Latency Distribution
     50%  394.00us
     75%    2.69ms
     90%    4.64ms
     99%   10.02ms
  121369 requests in 4.02s, 19.10MB read
  Socket errors: connect 0, read 1, write 0, timeout 12
  Non-2xx or 3xx responses: 5
Requests/sec:  30162.56
Transfer/sec:      4.75MB
";
        let load = parse_wrk(text).expect("parses");
        assert_eq!(load.requests, 121_369);
        assert_eq!(load.non_2xx, 5);
        assert_eq!(load.errors, 13);
        assert!((load.seconds - 4.02).abs() < 1e-9);
        assert!((load.p99_ms - 10.02).abs() < 1e-9);
        assert!((load.goodput() - 121_364.0 / 4.02).abs() < 1e-6);
        assert_eq!(duration_ms("394.00us"), Some(0.394));
        assert_eq!(duration_ms("1.50m"), Some(90_000.0));
        assert!(parse_wrk("garbage").is_err());
    }
}
