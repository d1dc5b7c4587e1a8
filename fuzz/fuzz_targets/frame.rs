//! The CPU workers' pipe protocol on any bytes: reading never panics, and
//! what reads as a message writes back to bytes that read the same.
#![no_main]
use jobd::pool::frame::{self, FromWorker, ToWorker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    while let Ok(Some(_)) = frame::read::<ToWorker>(&mut input) {}
    let mut input = data;
    while let Ok(Some(message)) = frame::read::<FromWorker>(&mut input) {
        let mut bytes = Vec::new();
        frame::write(&mut bytes, &message).expect("a message read can be written");
        let again: FromWorker = frame::read(&mut &bytes[..])
            .expect("a written frame reads")
            .expect("one message");
        assert_eq!(format!("{message:?}"), format!("{again:?}"));
    }
});
