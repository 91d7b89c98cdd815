//! The test programs (`test-ebpf`: baselines, flood generator and sink, source sprayer), loaded
//! from their own object so that the firewall's object holds only the firewall.
//!
//! Two ways to load them. [`TestPrograms::load`] alone: the generator, the sink and the
//! one-compare floor need nothing of apifw's. [`TestPrograms::beside`] a loaded firewall: the
//! one-lookup baseline must read apifw's own prefix map and count in apifw's stats, or it would
//! not be the same lookup (size, contents and cache behaviour decide its cost). aya 0.14 shares a
//! map between objects by pin only, so the firewall's two maps are pinned in a directory of this
//! process for the moment of loading, and the directory is removed at once: the loaded object
//! holds the maps by file descriptor from then on. The tail call of the sprayer takes a program
//! file descriptor from any object ([`TestPrograms::set_spray_target`]).

use anyhow::{Context as _, bail};
pub use apifw_test_ebpf::{map_names, program_names};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, ProgramArray},
    programs::{ProgramFd, Xdp},
};
use firewall_userspace::Firewall;

use crate::support::{BpffsDir, map_data};

/// The test programs' object, built by this crate's build script.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apifw-test-ebpf"));

/// The loaded test object; its programs are loaded into the kernel on first use.
pub struct TestPrograms {
    ebpf: Ebpf,
}

impl TestPrograms {
    /// The test object on its own (its copies of apifw's maps are small and unused).
    pub fn load() -> anyhow::Result<Self> {
        let ebpf = EbpfLoader::new()
            .load(OBJECT)
            .context("load the test programs' object (root needed)")?;
        Ok(Self { ebpf })
    }

    /// The test object sharing `firewall`'s maps in [`map_names::SHARED_WITH_FIREWALL`].
    pub fn beside(firewall: &Firewall) -> anyhow::Result<Self> {
        let pins = BpffsDir::create("test-programs")?;
        let mut paths = Vec::new();
        for name in map_names::SHARED_WITH_FIREWALL {
            let path = pins.join(name);
            firewall
                .map(name)?
                .pin(&path)
                .with_context(|| format!("pin the firewall's {name} at {}", path.display()))?;
            paths.push((name, path));
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .load(OBJECT)
            .context("load the test programs' object beside the firewall")?;
        drop(pins);
        let programs = Self { ebpf };
        // aya creates (and pins) a new map where a pin path holds none: make sure each shared
        // map is the firewall's, or a baseline would silently read an empty table.
        for name in map_names::SHARED_WITH_FIREWALL {
            let ours = map_id(programs.ebpf.map(name), name)?;
            let theirs = map_id(Some(firewall.map(name)?), name)?;
            if ours != theirs {
                bail!("the test object's {name} is map {ours}, the firewall's is {theirs}");
            }
        }
        Ok(programs)
    }

    /// The program `name` (one of [`program_names`]), loaded into the kernel.
    pub fn program_mut(&mut self, name: &'static str) -> anyhow::Result<&mut Xdp> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("the test object has no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not an XDP program"))?;
        if program.fd().is_err() {
            program
                .load()
                .with_context(|| format!("load the test program {name}"))?;
        }
        Ok(program)
    }

    /// The map `name` (one of [`map_names`]).
    pub fn map_mut(&mut self, name: &'static str) -> anyhow::Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("the test object has no map {name}"))
    }

    /// Makes the sprayer tail-call `target` (a program of any object).
    pub fn set_spray_target(&mut self, target: &ProgramFd) -> anyhow::Result<()> {
        let mut slots = ProgramArray::try_from(self.map_mut(map_names::SPRAY_TARGET)?)?;
        slots
            .set(0, target, 0)
            .context("set the sprayer's target")?;
        Ok(())
    }
}

/// The kernel's id of a map, which tells two handles of one map from two maps.
fn map_id(map: Option<&Map>, name: &str) -> anyhow::Result<u32> {
    let Some(map) = map else {
        bail!("no map {name}");
    };
    let data = map_data(map)
        .with_context(|| format!("{name} has a map type the test programs do not use"))?;
    Ok(data
        .info()
        .with_context(|| format!("read {name}'s info"))?
        .id())
}
