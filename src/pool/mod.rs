//! The pools that run attempts: [`threads`] for IO kinds. (The CPU worker
//! processes arrive with their own issue.)

pub mod threads;

pub use threads::ThreadPool;
