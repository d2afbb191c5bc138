//! qflow's step kinds, one file per kind. Each kind is a typed fields struct that
//! implements [`qflow_engine::Step`]; [`registry`] lists them all.

pub mod boot;
pub mod command;
pub mod customize;
pub mod debootstrap;
pub mod disk;
pub mod download;
pub mod image;
pub mod image_file;
pub mod kernel;
pub mod package_name;
pub mod qemu_img;
pub mod root_tree;
pub mod secret;

use qflow_engine::{KindOf, Registry};

/// Every step kind qflow knows.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.add(KindOf::<command::Command>::new());
    r.add(KindOf::<boot::Boot>::new());
    r.add(KindOf::<customize::Customize>::new());
    r.add(KindOf::<debootstrap::Debootstrap>::new());
    r.add(KindOf::<image::Image>::new());
    r.add(KindOf::<disk::Disk>::new());
    r.add(KindOf::<download::Download>::new());
    r.add(KindOf::<kernel::Kernel>::new());
    r
}
