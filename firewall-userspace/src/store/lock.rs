//! The instance lock: one daemon per run directory, held with flock(2) so that it is released
//! by the kernel however the daemon dies.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use crate::paths;

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another daemon holds it.
    #[error("another apifw daemon (pid {pid}) is already running with run directory {}", run_dir.display())]
    Held {
        /// The run directory.
        run_dir: PathBuf,
        /// The holder's pid as it wrote it (or "unknown").
        pid: String,
    },
    /// The lock file could not be created or written.
    #[error("cannot use lock file {}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A held instance lock; released on drop.
#[derive(Debug)]
pub struct InstanceLock {
    _file: Flock<File>,
}

fn open(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

impl InstanceLock {
    /// Takes the lock of `run_dir`, creating the directory, and records this process's pid.
    pub fn acquire(run_dir: &Path) -> Result<Self, LockError> {
        let path = paths::lock_file(run_dir);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(run_dir).map_err(io)?;
        let file = open(&path, true).map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => file,
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    run_dir: run_dir.to_owned(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.to_owned()
                    },
                });
            }
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }

    /// Whether a daemon currently holds the lock of `run_dir`.
    pub fn is_held(run_dir: &Path) -> bool {
        let Ok(file) = open(&paths::lock_file(run_dir), false) else {
            return false;
        };
        Flock::lock(file, FlockArg::LockSharedNonblock).is_err()
    }
}
