//! After the upgrade: frame tracking, Mosaic message rules and the byte pump.

pub mod frame;
pub(crate) mod limiter;
pub mod mosaic;
pub mod mosaic2025;
pub mod profile;
pub(crate) mod pump;
pub mod tracker;
