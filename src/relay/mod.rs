//! After the upgrade: frame tracking, Mosaic message rules and the byte pump.

pub mod frame;
pub(crate) mod limiter;
pub mod mosaic;
pub(crate) mod pump;
pub mod tracker;
