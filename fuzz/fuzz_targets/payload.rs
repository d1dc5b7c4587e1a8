//! Every kind's payload check and the display redaction, on any text: they
//! must answer (ok or an error naming the field), never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

const KINDS: [&str; 8] = [
    "noop", "http", "email", "file", "checksum", "compress", "exec", "bogus",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let kind = KINDS[pick as usize % KINDS.len()];
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if let Err(e) = jobd::kinds::check_payload(kind, text) {
        assert!(!e.to_string().is_empty());
    }
    let shown = jobd::kinds::redacted_payload(kind, text);
    if serde_json::from_str::<serde_json::Value>(text).is_err() {
        // What cannot be read is shown as it is, never rewritten.
        assert_eq!(shown, text);
    }
});
