//! The admin API's request handling on arbitrary requests: method, URL, token and body from
//! the input (split at the first three newlines), against a running control plane with no
//! workers. Any answer is fine; a panic is a bug. `/debug/` (fault injection on purpose) and
//! `/reload` (reads a file) are left out.
#![no_main]

use std::sync::{Arc, OnceLock};

use ballast::Control;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = "
admin: {bind: '127.0.0.1:0'}
listeners:
  - {name: l, protocol: tcp, bind: '127.0.0.1:0', target_group: g}
target_groups:
  - name: g
    targets: [{address: '127.0.0.1:9'}, {address: '127.0.0.1:10', weight: 3}]
";

fn control() -> &'static Arc<Control> {
    static CONTROL: OnceLock<Arc<Control>> = OnceLock::new();
    CONTROL.get_or_init(|| {
        let config = ballast::config::parse(std::path::Path::new("fuzz.yaml"), CONFIG)
            .expect("the fuzz target's config is valid");
        Control::new(ballast::Generation::new(config), Vec::new())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(4, '\n');
    let (method, url, token, body) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let Ok(method) = method.parse::<ballast::Method>() else {
        return;
    };
    if url.contains("/debug/") || url.contains("/reload") {
        return;
    }
    let token = (!token.is_empty()).then_some(token);
    let _ = ballast::answer(control(), &method, url, token, || Ok(body.to_string()));
});
