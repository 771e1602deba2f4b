//! The field-mapping file: any text is either a mapping or an error naming an entry.
#![no_main]

use crm_sync::domain::mapping::Mapping;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = Mapping::parse(text) {
        assert!(!error.to_string().is_empty());
    }
});
