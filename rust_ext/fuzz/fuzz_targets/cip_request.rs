//! Fuzz target: one CIP message router request, containers unwrapped, every leaf's tag name rendered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonegate_core::enip::{flatten, parse_path, parse_request, parse_response, MAX_DEPTH, MAX_LEAVES};

fuzz_target!(|data: &[u8]| {
    let _ = parse_path(data);
    let _ = parse_response(data);
    if let Ok(req) = parse_request(data) {
        let _ = req.path.tag.as_ref().map(|t| t.text());
    }
    if let Ok(leaves) = flatten(data) {
        assert!(!leaves.is_empty() && leaves.len() <= MAX_LEAVES);
        for leaf in &leaves {
            assert!(leaf.depth <= MAX_DEPTH);
            assert!(!leaf.request.service.is_container());
            let _ = leaf.request.path.tag.as_ref().map(|t| t.text());
        }
    }
});
