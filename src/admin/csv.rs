//! `GET /targets?format=csv` and `GET /listeners?format=csv`: the JSON documents of those
//! endpoints flattened to one CSV row per target or listener (the `csv` crate quotes what
//! needs it), for spreadsheets and scripts, as HAProxy's `;csv` stats. Built from the JSON
//! document itself, so the two never disagree.

use serde_json::Value;

use super::Reply;

/// The target columns: `(header, path into a target's JSON)`; `group` is the target group's.
const TARGET_COLUMNS: [(&str, &[&str]); 17] = [
    ("target", &["address"]),
    ("health", &["health"]),
    ("admin_state", &["admin_state"]),
    ("weight", &["weight"]),
    ("backup", &["backup"]),
    ("active", &["active"]),
    ("total", &["total"]),
    ("connect_failures", &["connect_failures"]),
    ("ejected", &["ejected"]),
    ("bytes_to_target", &["bytes_to_target"]),
    ("bytes_from_target", &["bytes_from_target"]),
    ("last_check", &["last_check", "result"]),
    ("last_check_unix_ms", &["last_check", "at_unix_ms"]),
    ("last_check_latency_ms", &["last_check", "latency_ms"]),
    ("last_failure", &["last_failure", "reason"]),
    ("last_failure_unix_ms", &["last_failure", "at_unix_ms"]),
    ("last_state_change_unix_ms", &["last_state_change_unix_ms"]),
];

/// The listener columns.
const LISTENER_COLUMNS: [(&str, &[&str]); 8] = [
    ("listener", &["name"]),
    ("protocol", &["protocol"]),
    ("bind", &["bind"]),
    ("target_group", &["target_group"]),
    ("max_connections", &["max_connections"]),
    ("active", &["active"]),
    ("accepted", &["accepted"]),
    ("refused", &["refused"]),
];

/// A CSV body as the answer.
pub(super) fn reply(body: Vec<u8>) -> Reply {
    Reply {
        status: 200,
        content_type: "text/csv; charset=utf-8",
        body,
    }
}

/// A value as a CSV cell: strings bare, null empty.
fn cell(v: &Value, path: &[&str]) -> String {
    let v = path.iter().fold(v, |v, key| &v[*key]);
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `GET /targets` document as CSV: `group` then [`TARGET_COLUMNS`].
pub(super) fn targets(doc: &Value) -> Vec<u8> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let header = std::iter::once("group").chain(TARGET_COLUMNS.iter().map(|(h, _)| *h));
    let _ = out.write_record(header);
    for g in doc["target_groups"].as_array().into_iter().flatten() {
        for t in g["targets"].as_array().into_iter().flatten() {
            let row = std::iter::once(cell(g, &["name"]))
                .chain(TARGET_COLUMNS.iter().map(|(_, path)| cell(t, path)));
            let _ = out.write_record(row);
        }
    }
    out.into_inner().unwrap_or_default()
}

/// The `GET /listeners` document as CSV: [`LISTENER_COLUMNS`], then one column per refusal
/// reason (`refused_denied`, …).
pub(super) fn listeners(doc: &Value) -> Vec<u8> {
    let reasons: Vec<String> = crate::listener::Refusal::ALL
        .iter()
        .map(|r| r.as_str().to_string())
        .collect();
    let mut out = csv::Writer::from_writer(Vec::new());
    let header = LISTENER_COLUMNS
        .iter()
        .map(|(h, _)| h.to_string())
        .chain(reasons.iter().map(|r| format!("refused_{r}")));
    let _ = out.write_record(header);
    for l in doc["listeners"].as_array().into_iter().flatten() {
        let row = LISTENER_COLUMNS
            .iter()
            .map(|(_, path)| cell(l, path))
            .chain(reasons.iter().map(|r| cell(l, &["refused_by_reason", r])));
        let _ = out.write_record(row);
    }
    out.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_row_per_target_with_quotes_where_needed() {
        let doc = json!({"target_groups": [{"name": "pg", "targets": [{
            "address": "10.0.0.1:5432", "health": "unhealthy", "weight": 1,
            "last_check": {"result": "fail"},
            "last_failure": {"reason": "expected \"+PONG\", got \"-ERR\"", "at_unix_ms": 5},
        }]}]});
        let text = String::from_utf8(targets(&doc)).unwrap();
        let mut rows = csv::Reader::from_reader(text.as_bytes());
        let header = rows.headers().unwrap().clone();
        let row = rows.records().next().unwrap().unwrap();
        let get = |name: &str| &row[header.iter().position(|h| h == name).unwrap()];
        assert_eq!(get("group"), "pg");
        assert_eq!(get("target"), "10.0.0.1:5432");
        assert_eq!(get("last_failure"), "expected \"+PONG\", got \"-ERR\"");
        assert_eq!(get("last_failure_unix_ms"), "5");
        assert_eq!(get("last_state_change_unix_ms"), "");
    }
}
