//! Property tests of what users and peers send: job files, tensor chunks and ring frames.
//! Whatever comes in, parsing and checking return a value or an error, never a panic, and
//! what they accept is exactly what was meant. Bounded in CI (proptest's default of 256
//! cases each); `PROPTEST_CASES=100000 cargo test --release -p graft-tests --test fuzz` is
//! the long run (docs/RELIABILITY.md).

use std::path::PathBuf;

use graft_proto::chunk::{Assembler, checksum, split};
use graft_proto::v1 as pb;
use graft_transfer::spec::JobSpec;
use proptest::prelude::*;
use prost::Message;

fn examples() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut texts: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples/")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| std::fs::read_to_string(e.path()).expect("readable example"))
        .collect();
    texts.sort();
    assert!(texts.len() >= 10, "the examples are there");
    texts
}

/// One edit of a job file: a byte replaced, removed or inserted, or a line duplicated,
/// dropped or given a hostile value.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Remove(usize),
    Insert(usize, u8),
    DuplicateLine(usize),
    DropLine(usize),
    Value(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let hostile = prop_oneof![
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("1e309".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("9223372036854775808".to_string()),
        Just("18446744073709551616".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("\"\"".to_string()),
        Just("true".to_string()),
        "[a-z0-9_.\\-]{0,12}".prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
        any::<usize>().prop_map(Edit::Remove),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        any::<usize>().prop_map(Edit::DropLine),
        (any::<usize>(), hostile).prop_map(|(i, v)| Edit::Value(i, v)),
    ]
}

fn apply(text: &str, e: &Edit) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let at = |i: usize, n: usize| if n == 0 { 0 } else { i % n };
    match e {
        Edit::Replace(i, b) => {
            let n = bytes.len();
            if n > 0 {
                bytes[at(*i, n)] = *b;
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Edit::Remove(i) => {
            let n = bytes.len();
            if n > 0 {
                bytes.remove(at(*i, n));
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Edit::Insert(i, b) => {
            let n = bytes.len() + 1;
            bytes.insert(at(*i, n), *b);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Edit::DuplicateLine(i) => {
            let k = at(*i, lines.len());
            if let Some(l) = lines.get(k).cloned() {
                lines.insert(k, l);
            }
            lines.join("\n")
        }
        Edit::DropLine(i) => {
            let k = at(*i, lines.len());
            if k < lines.len() {
                lines.remove(k);
            }
            lines.join("\n")
        }
        Edit::Value(i, v) => {
            // The value of the i-th `key = value` line.
            let keyed: Vec<usize> = (0..lines.len())
                .filter(|&k| lines[k].contains(" = "))
                .collect();
            if let Some(&k) = keyed.get(at(*i, keyed.len()))
                && let Some((key, _)) = lines[k].split_once(" = ")
            {
                lines[k] = format!("{key} = {v}");
            }
            lines.join("\n")
        }
    }
}

proptest! {
    // Failures are reported with their minimal input, not written into the source tree.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A job file with up to four edits parses and validates to a spec or an error, never a
    /// panic; what validates survives the round trip through the wire unchanged.
    #[test]
    fn job_files_parse_or_fail_cleanly(which in any::<usize>(), edits in prop::collection::vec(edit(), 1..5)) {
        let all = examples();
        let mut text = all[which % all.len()].clone();
        for e in &edits {
            text = apply(&text, e);
        }
        if let Ok(spec) = toml::from_str::<JobSpec>(&text)
            && spec.validate().is_ok()
        {
            let wire = graft_common::wire::spec_to_pb(&spec);
            let back = graft_common::wire::spec_from_pb(&wire);
            prop_assert!(back.is_ok(), "a valid spec comes back off the wire: {back:?}");
        }
    }

    /// Whatever chunks arrive, the assembler takes exactly the tensor that was split, in
    /// order, and refuses anything else with an error (never a panic or a wrong tensor).
    #[test]
    fn the_chunk_assembler_takes_the_tensor_and_nothing_else(
        values in prop::collection::vec(-1e6f32..1e6, 1..300),
        chunk_bytes in 4usize..64,
        step in 0u64..4,
        generation in 0u64..4,
        tamper in prop::option::of((any::<usize>(), 0u8..7, any::<u64>())),
    ) {
        let mut chunks = split(&values, step, generation, chunk_bytes / 4 * 4);
        let before = chunks.clone();
        match (tamper, chunks.len()) {
            (Some((i, what, x)), n) if n > 0 => {
                let c = &mut chunks[i % n];
                match what {
                    0 => c.step ^= 1 + (x % 3),
                    1 => c.generation ^= 1 + (x % 3),
                    2 => c.total_len = c.total_len.wrapping_add(1 + x % 5),
                    3 => c.offset = c.offset.wrapping_add(1 + x % 5),
                    4 => c.crc32 ^= 1 + (x as u32 % 7),
                    5 => c.data = c.data[..c.data.len().saturating_sub(1 + (x as usize % 3))].to_vec().into(),
                    _ => { chunks.remove(i % n); }
                }
            }
            _ => {}
        }
        // An edit that changed nothing (cutting an empty chunk) is no tampering.
        let tampered = chunks != before;
        let mut asm = Assembler::new(step, generation, values.len() as u64).reject_non_finite();
        let pushed: Result<(), _> = chunks.iter().try_for_each(|c| asm.push(c));
        let got = pushed.and_then(|()| asm.finish());
        if tampered {
            prop_assert!(got.is_err(), "a tampered chunk is refused");
        } else {
            prop_assert_eq!(got.expect("the untouched tensor"), values);
        }
    }

    /// Arbitrary bytes and damaged encodings of real ring frames decode to a message or an
    /// error; a decoded frame's chunk is then taken only if it is whole and its checksum
    /// holds.
    #[test]
    fn ring_frames_decode_or_fail_cleanly(
        values in prop::collection::vec(-10f32..10.0, 1..64),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        junk in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let chunk = split(&values, 3, 2, 1 << 20).remove(0);
        let frame = pb::RingMessage {
            job_id: "job-1-abcdefgh".into(),
            from_rank: 0,
            bucket: 0,
            segment: 1,
            phase: pb::RingPhase::ReduceScatter as i32,
            chunk: Some(chunk),
            step: 3,
            generation: 2,
            nonce: vec![1; 16],
            proof: vec![2; 32],
            ..Default::default()
        };
        let mut bytes = frame.encode_to_vec();
        for (i, b) in &flips {
            let n = bytes.len();
            bytes[i % n] ^= b;
        }
        let _ = pb::RingMessage::decode(junk.as_slice());
        if let Ok(m) = pb::RingMessage::decode(bytes.as_slice())
            && let Some(c) = m.chunk
        {
            let mut asm = Assembler::new(3, 2, values.len() as u64).reject_non_finite();
            if asm.push(&c).is_ok() {
                prop_assert_eq!(checksum(&c.data), c.crc32);
                prop_assert_eq!(c.data.len(), values.len() * 4);
            }
        }
    }
}
