//! Builds the XDP program (the `firewall-ebpf` crate) and leaves the object at
//! `$OUT_DIR/firewall-ebpf` for `include_bytes_aligned!`; how, in `build_ebpf.rs`.

#[path = "build_ebpf.rs"]
mod build_ebpf;

fn main() -> anyhow::Result<()> {
    build_ebpf::build("firewall-ebpf", "firewall-ebpf")
}
