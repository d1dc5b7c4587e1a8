//! The pools that run attempts: [`threads`] for IO kinds, [`processes`]
//! for CPU kinds (with [`worker`], the process side, and [`frame`], the
//! pipe protocol between the two).

pub mod frame;
pub mod processes;
pub mod threads;
pub mod worker;

pub use processes::ProcessPool;
pub use threads::ThreadPool;
