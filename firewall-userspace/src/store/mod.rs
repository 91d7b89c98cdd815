//! The store layer: what the daemon keeps on disk. Runtime changes survive restarts in the state
//! file ([`state`], written atomically), every change is audited ([`audit`]), and one daemon per
//! run directory holds the instance lock ([`lock`]).

pub mod audit;
pub mod lock;
pub mod state;
