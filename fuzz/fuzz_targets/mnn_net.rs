//! MNN `llm.mnn` (an MNN.Net FlatBuffer): the reader, then what `mm inspect` does with the
//! graph (validation, op counts, inputs, the JSON form, the content id).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_export::mnn::{net_flatbuffer, net_json};

fuzz_target!(init: { mm_fuzz::one_thread(); }, |data: &[u8]| {
    let Ok(graph) = net_flatbuffer::read_net(data) else { return };
    let _ = graph.validate(true);
    let _ = graph.validate(false);
    let _ = graph.op_counts();
    let _ = graph.inputs();
    let _ = graph.content_uuid();
    let _ = net_json::to_json(&graph);
});
