//! What jobd asks of the operating system, apart from files and sockets:
//! process facts from `/proc` ([`procfs`]), confinement of the daemon and its
//! workers ([`confine`]), signals turned into requests ([`signals`]),
//! systemd's notification socket ([`notify`]), and the capped read of a
//! file an operator names ([`bounded`]). Nothing here knows of jobs.

pub mod bounded;
pub mod confine;
pub mod notify;
pub mod procfs;
pub mod signals;
