//! The demo's nginx: an admin page behind HTTP basic auth, whose access log the policy's jail
//! follows. Everything it writes (configuration, logs, pid, temporary files) lives in the lab.

use std::{fs, path::Path, process::Command, time::Duration};

use anyhow::Result;

use crate::lab::{self, Lab, ProcessId};

use super::traffic::SERVICE_ADDR;

/// Where nginx listens (the API host's address; the rate-limit rule covers 8080 only).
pub const PORT: &str = "8081";
/// The protected page.
pub const ADMIN_PATH: &str = "/admin/";
/// The one account, `user:password`.
pub const GOOD_CREDENTIALS: &str = "demo:s3cret";
/// Access log, next to the lab's copy of the policy, where its jail's relative `log` points.
pub const ACCESS_LOG: &str = "nginx-access.log";

/// Starts nginx in `ns` with everything under `dir`, and waits until it wrote its pid file.
pub fn start(lab: &mut Lab, ns: &str, dir: &Path) -> Result<ProcessId> {
    let root = dir.join("nginx");
    fs::create_dir_all(root.join("www/admin"))?;
    fs::create_dir_all(root.join("tmp"))?;
    fs::write(root.join("www/admin/index.html"), "welcome, admin\n")?;
    // nginx reads `{PLAIN}` passwords as they are: fine for a throwaway lab account.
    let (user, password) = GOOD_CREDENTIALS
        .split_once(':')
        .unwrap_or((GOOD_CREDENTIALS, ""));
    fs::write(
        root.join("htpasswd"),
        format!("{user}:{{PLAIN}}{password}\n"),
    )?;
    let r = root.display();
    let log = dir.join(ACCESS_LOG);
    let config = format!(
        "user root root;\nworker_processes 1;\ndaemon off;\npid {r}/nginx.pid;\n\
         error_log {r}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n\
         access_log {} combined;\nclient_body_temp_path {r}/tmp/body;\n\
         proxy_temp_path {r}/tmp/proxy;\nfastcgi_temp_path {r}/tmp/fastcgi;\n\
         uwsgi_temp_path {r}/tmp/uwsgi;\nscgi_temp_path {r}/tmp/scgi;\n\
         server {{\nlisten {SERVICE_ADDR}:{PORT};\nroot {r}/www;\n\
         location {ADMIN_PATH} {{ auth_basic \"apifw demo\"; auth_basic_user_file {r}/htpasswd; }}\n\
         }}\n}}\n",
        log.display()
    );
    let conf = root.join("nginx.conf");
    fs::write(&conf, config)?;
    // The log exists before the daemon starts, so the jail follows it from its start.
    fs::write(&log, "")?;
    let mut nginx = Command::new("ip");
    nginx
        .args(["netns", "exec", ns, "nginx", "-p"])
        .arg(&root)
        .arg("-c")
        .arg(&conf);
    let process = lab.spawn("nginx", nginx)?;
    lab::wait_until(Duration::from_secs(10), "nginx to start", || {
        lab.ensure_running(process)?;
        Ok(root.join("nginx.pid").exists())
    })?;
    Ok(process)
}

/// The admin page's URL.
pub fn admin_url() -> String {
    format!("http://{SERVICE_ADDR}:{PORT}{ADMIN_PATH}")
}
