//! What jobd asks of the operating system, apart from files and sockets:
//! process facts from `/proc` ([`procfs`]), confinement of the daemon and its
//! workers ([`confine`]), signals turned into requests ([`signals`]) and
//! systemd's notification socket ([`notify`]). Nothing here knows of jobs.

pub mod confine;
pub mod notify;
pub mod procfs;
pub mod signals;
