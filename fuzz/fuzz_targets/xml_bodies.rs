//! Every XML body the node reads from the wire: PIDF (PUBLISH), category
//! publications (SERVICE and PUBLISH in the Microsoft dialect) and batched
//! subscription lists. None may panic, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porchlight_presence::xml_in::{parse_batch_subscribe, parse_category_publish, parse_pidf};
use porchlight_presence::XmlLimits;

fuzz_target!(|data: &[u8]| {
    let limits = XmlLimits::default();
    let _ = parse_pidf(data, limits);
    let _ = parse_category_publish(data, limits);
    let _ = parse_batch_subscribe(data, limits);
});
