//! Unit tests of the parent module, in a file of their own to keep the module readable.

use super::*;

#[test]
fn a_pin_root_off_bpffs_is_refused_with_the_reason() {
    // The crate's own directory is on an ordinary filesystem, never bpffs.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-pin-dir");
    let err = check_bpffs(&root).expect_err("not bpffs");
    assert!(
        matches!(&err, DaemonError::NotBpffs { path } if path == Path::new(env!("CARGO_MANIFEST_DIR"))),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
        "{err}"
    );
}
