//! Golden wire bytes for the original control plane's messages, written by hand from the
//! field numbers and types in WIRE-COMPAT.md. If one of these fails, an existing Go component
//! would no longer understand us.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_proto::{legacy, v1};
use prost::Message;
use std::collections::HashMap;

/// A length-delimited field: tag (field << 3 | 2), length, bytes.
fn ld(field: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![(field << 3) | 2, bytes.len() as u8];
    v.extend_from_slice(bytes);
    v
}

/// A varint field: tag (field << 3 | 0), value (< 128 here).
fn var(field: u8, value: u8) -> Vec<u8> {
    vec![field << 3, value]
}

fn map_entry(field: u8, k: &str, v: &[u8], value_is_string: bool) -> Vec<u8> {
    let mut e = ld(1, k.as_bytes());
    if value_is_string {
        e.extend(ld(2, v));
    } else {
        // A double: tag (2 << 3 | 1) then 8 little-endian bytes.
        e.push((2 << 3) | 1);
        e.extend_from_slice(v);
    }
    ld(field, &e)
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn legacy_service_info() {
    let msg = legacy::ServiceInfo {
        service_id: "svc".into(),
        service_type: legacy::ServiceType::Processor as i32,
        input_event_types: vec!["in".into()],
        output_event_types: vec!["out".into()],
        health_endpoint: "http://h:8088/health".into(),
        max_inflight: 7,
        metadata: HashMap::from([("k".into(), "v".into())]),
        component_id: "ttp".into(),
    };
    let golden = cat(&[
        ld(1, b"svc"),
        var(2, 2),
        ld(3, b"in"),
        ld(4, b"out"),
        ld(5, b"http://h:8088/health"),
        var(6, 7),
        map_entry(7, "k", b"v", true),
        ld(8, b"ttp"),
    ]);
    assert_eq!(msg.encode_to_vec(), golden);
    assert_eq!(legacy::ServiceInfo::decode(golden.as_slice()).unwrap(), msg);
}

#[test]
fn legacy_ack_heartbeat_status_and_list() {
    let ack = legacy::RegistrationAck {
        service_id: "s".into(),
        topic_names: vec!["t".into()],
        connection_info: HashMap::from([("b".into(), "k:9092".into())]),
    };
    assert_eq!(
        ack.encode_to_vec(),
        cat(&[ld(1, b"s"), ld(2, b"t"), map_entry(3, "b", b"k:9092", true)])
    );

    let hb = legacy::ServiceHeartbeat {
        service_id: "s".into(),
        timestamp: Some(prost_types::Timestamp {
            seconds: 5,
            nanos: 0,
        }),
        metrics: HashMap::from([("m".into(), 1.5)]),
    };
    let golden = cat(&[
        ld(1, b"s"),
        ld(2, &var(1, 5)),
        map_entry(3, "m", &1.5f64.to_le_bytes(), false),
    ]);
    assert_eq!(hb.encode_to_vec(), golden);

    let st = legacy::ServiceStatus {
        service_id: "s".into(),
        service_type: legacy::ServiceType::Sink as i32,
        is_healthy: true,
        last_heartbeat: Some(prost_types::Timestamp {
            seconds: 9,
            nanos: 0,
        }),
        metrics: HashMap::new(),
        component_id: "c".into(),
    };
    let st_bytes = cat(&[
        ld(1, b"s"),
        var(2, 3),
        var(3, 1),
        ld(4, &var(1, 9)),
        ld(6, b"c"),
    ]);
    assert_eq!(st.encode_to_vec(), st_bytes);
    let list = legacy::ServiceList { services: vec![st] };
    assert_eq!(list.encode_to_vec(), ld(1, &st_bytes));
    assert_eq!(legacy::ServiceType::Pipeline as i32, 4);
}

#[test]
fn v1_component_info_and_register() {
    let info = v1::ComponentInfo {
        id: "i".into(),
        name: "n".into(),
        description: "d".into(),
        version: "1".into(),
        r#type: v1::ComponentType::Consumer as i32,
        input_event_types: vec!["a".into()],
        output_event_types: vec!["b".into()],
        endpoint: "h:1".into(),
        metadata: HashMap::from([("k".into(), "v".into())]),
    };
    let info_bytes = cat(&[
        ld(1, b"i"),
        ld(2, b"n"),
        ld(3, b"d"),
        ld(4, b"1"),
        var(5, 3),
        ld(6, b"a"),
        ld(7, b"b"),
        ld(8, b"h:1"),
        map_entry(9, "k", b"v", true),
    ]);
    assert_eq!(info.encode_to_vec(), info_bytes);
    let req = v1::RegisterRequest {
        component: Some(info.clone()),
        component_id: "cid".into(),
    };
    assert_eq!(
        req.encode_to_vec(),
        cat(&[ld(1, &info_bytes), ld(2, b"cid")])
    );
    let resp = v1::RegisterResponse {
        service_id: "s".into(),
        assigned_topics: vec!["t".into()],
        connection_info: HashMap::from([("x".into(), "y".into())]),
    };
    assert_eq!(
        resp.encode_to_vec(),
        cat(&[ld(1, b"s"), ld(2, b"t"), map_entry(3, "x", b"y", true)])
    );
    let disc = v1::DiscoveryRequest {
        r#type: v1::ComponentType::Source as i32,
        event_types: vec!["e".into()],
        metadata_filters: HashMap::from([("k".into(), "v".into())]),
    };
    assert_eq!(
        disc.encode_to_vec(),
        cat(&[var(1, 1), ld(2, b"e"), map_entry(3, "k", b"v", true)])
    );
    let dresp = v1::DiscoveryResponse {
        components: vec![info],
    };
    assert_eq!(dresp.encode_to_vec(), ld(1, &info_bytes));
}

#[test]
fn v1_heartbeat_status_list_and_event() {
    let hb = v1::HeartbeatRequest {
        service_id: "s".into(),
        status: v1::HealthStatus::Stopping as i32,
        metrics: HashMap::from([("m".into(), "2".into())]),
    };
    assert_eq!(
        hb.encode_to_vec(),
        cat(&[ld(1, b"s"), var(2, 5), map_entry(3, "m", b"2", true)])
    );
    assert_eq!(
        v1::UnregisterRequest {
            service_id: "s".into()
        }
        .encode_to_vec(),
        ld(1, b"s")
    );
    assert_eq!(
        v1::ComponentStatusRequest {
            service_id: "s".into()
        }
        .encode_to_vec(),
        ld(1, b"s")
    );
    let st = v1::ComponentStatusResponse {
        component: None,
        status: v1::HealthStatus::Healthy as i32,
        last_heartbeat: Some(prost_types::Timestamp {
            seconds: 3,
            nanos: 0,
        }),
        metrics: HashMap::new(),
        registered_at: Some(prost_types::Timestamp {
            seconds: 2,
            nanos: 0,
        }),
    };
    let st_bytes = cat(&[var(2, 2), ld(3, &var(1, 3)), ld(5, &var(1, 2))]);
    assert_eq!(st.encode_to_vec(), st_bytes);
    assert_eq!(
        v1::ListComponentsResponse {
            components: vec![st]
        }
        .encode_to_vec(),
        ld(1, &st_bytes)
    );
    assert_eq!(
        v1::ListComponentsRequest {
            type_filter: 2,
            include_unhealthy: true
        }
        .encode_to_vec(),
        cat(&[var(1, 2), var(2, 1)])
    );
    let ev = v1::Event {
        id: "e".into(),
        r#type: "t".into(),
        payload: vec![1, 2],
        metadata: HashMap::new(),
        timestamp: None,
        source_component_id: "src".into(),
        content_type: "ct".into(),
        stellar_cursor: Some(v1::StellarCursor {
            ledger_sequence: 100,
            index_in_ledger: 4,
        }),
    };
    assert_eq!(
        ev.encode_to_vec(),
        cat(&[
            ld(1, b"e"),
            ld(2, b"t"),
            ld(3, &[1, 2]),
            ld(6, b"src"),
            ld(7, b"ct"),
            ld(8, &cat(&[var(1, 100), var(2, 4)])),
        ])
    );
}
