//! The live status page at `GET /`: one HTML file, a script and a style sheet, compiled into
//! the binary (no CDN, works offline). The script polls `GET /node`, `/listeners` and
//! `/targets` every two seconds, draws connections/s and bytes/s per target as sparklines
//! from the counters' deltas (the last five minutes the page has been open), and offers
//! drain / enable / disable per target, each after a confirmation dialog, through the same
//! API. It is served under the API's auth rules: with a token configured, the browser's
//! log-in prompt takes it as the password (HTTP Basic, any user name).

use super::Reply;

/// Where the script is served.
pub(crate) const SCRIPT: &str = "/status.js";
/// Where the style sheet is served.
pub(crate) const STYLE: &str = "/status.css";

const HTML: &str = include_str!("page/index.html");
const JS: &str = include_str!("page/status.js");
const CSS: &str = include_str!("page/status.css");

/// The asset at `path` (`/`, [`SCRIPT`] or [`STYLE`]); 404 for any other path.
pub(crate) fn asset(path: &str) -> Reply {
    let (content_type, body) = match path {
        "/" => ("text/html; charset=utf-8", HTML),
        SCRIPT => ("text/javascript; charset=utf-8", JS),
        STYLE => ("text/css; charset=utf-8", CSS),
        _ => return super::error(404, &format!("no such endpoint: {path}")),
    };
    Reply {
        status: 200,
        content_type,
        body: body.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(HTML.contains(&format!("src=\"{SCRIPT}\"")));
        assert!(HTML.contains(&format!("href=\"{STYLE}\"")));
        // No remote resource: the page must work offline and under the CSP.
        for text in [HTML, JS, CSS] {
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert_eq!(asset("/nope").status, 404);
    }
}
