//! `tether import`'s readers: nginx, HAProxy and Ingress files, and format guessing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether::import::{import, Format, ImportError, Options};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = std::path::Path::new("<fuzz>");
        for f in [None, Some(Format::Nginx), Some(Format::Haproxy), Some(Format::Ingress)] {
            // Never a panic, and never YAML that tether's own check refuses.
            let r = import(text, f, &Options::default(), path);
            assert!(!matches!(r, Err(ImportError::Invalid(_))), "{r:?}");
        }
    }
});
