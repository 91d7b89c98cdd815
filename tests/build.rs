//! Builds the test programs (the `test-ebpf` crate: baselines, flood generator, source sprayer)
//! and leaves the object at `$OUT_DIR/apifw-test-ebpf` for `apifw_tests::programs`; the same
//! build as the firewall's (`firewall-userspace/build_ebpf.rs`).

#[path = "../firewall-userspace/build_ebpf.rs"]
mod build_ebpf;

fn main() -> anyhow::Result<()> {
    build_ebpf::build("test-ebpf", "apifw-test-ebpf")
}
