//! Request parsing must never panic, whatever the bytes: scan bodies (decode + validation),
//! token ids, staff keys, import files and stored token records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scan_gateway::facility::patient_keys::PatientHasher;
use scan_gateway::facility::token_id::TokenRef;
use scan_gateway::ingress::body;
use scan_gateway::ingress::validate::ScanRequest;
use scan_gateway::persistence::record;
use scan_gateway::registry::{import, staff};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = body::decode::<ScanRequest>(data) {
        let hasher = PatientHasher::new("fuzz-secret-0123456789");
        let _ = req.into_input(&hasher, 2026, None);
    }
    let _ = import::parse(import::Format::Ndjson, data, "Asia/Kolkata", 1800);
    let _ = import::parse(import::Format::Csv, data, "Asia/Kolkata", 1800);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = TokenRef::decode(text);
        let _ = staff::parse(text);
        let _ = record::decode("OPD1", 1, text);
    }
});
