//! `herald serve --examples`: the examples gallery (DESIGN.md, "Examples
//! gallery"). Three parts:
//! - the pages: the folder `examples/web/` of the repository served at
//!   `/examples/` (`/examples/chat/` is `examples/web/chat/index.html`),
//!   read from disk so that the third-party libraries `npm ci` puts in its
//!   `vendor/` folder need no rebuild of Herald;
//! - the topic policies the pages rely on, for topics under `examples/`,
//!   after the configuration's own `[[topics]]` (first match wins, so a
//!   user's table of the same topics takes precedence);
//! - the live dashboard's generator: this node's figures, published once a
//!   second.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use herald_core::{Data, Hub, NewEvent, Topic};
use tower::ServiceExt;
use tower_http::services::ServeDir;

/// The topic the dashboard generator publishes to.
pub const DASHBOARD_TOPIC: &str = "examples/dashboard/metrics";

/// How often the dashboard generator publishes.
const DASHBOARD_PERIOD: Duration = Duration::from_secs(1);

/// The pages' topic policies, as `[[topics]]` tables (the `settings::topics`
/// checks apply to them like to a config file's). `%PUBLISH_HOOK%` is set
/// to whether a hook URL is configured: chat messages go through the
/// publish hook when there is one.
const POLICIES: &str = r#"
[[topics]]
pattern = "examples/chat/**"
history = 500
presence = true
join_leave = true
client_publish = true
publish_rate = 20
publish_hook = %PUBLISH_HOOK%

[[topics]]
pattern = "examples/editor/*/carets"
history = 0
presence = true
join_leave = true
client_publish = true
publish_rate = 60

[[topics]]
pattern = "examples/editor/**"
history = 1000
client_publish = true
publish_rate = 100

[[topics]]
pattern = "examples/game/**"
history = 0
presence = true
join_leave = true
client_publish = true
publish_rate = 60

[[topics]]
pattern = "examples/cursors/**"
history = 0
presence = true
join_leave = true
client_publish = true
publish_rate = 60

[[topics]]
pattern = "examples/notifications/**"
history = 1000
client_publish = true

[[topics]]
pattern = "examples/dashboard/**"
history = 100
"#;

/// The `[[topics]]` tables of the examples' topics (see [`POLICIES`]);
/// `publish_hook` on chat topics when `hook` (a `--hook-url` is set), and
/// no `history` above `max_history` (the server's `--history`).
pub fn policy_tables(hook: bool, max_history: usize) -> Vec<toml::Table> {
    let text = POLICIES.replace("%PUBLISH_HOOK%", if hook { "true" } else { "false" });
    let mut doc: toml::Table = toml::from_str(&text).expect("the examples' policies are TOML");
    match doc.remove("topics") {
        Some(toml::Value::Array(tables)) => tables
            .into_iter()
            .filter_map(|t| match t {
                toml::Value::Table(mut t) => {
                    if let Some(h) = t.get("history").and_then(|h| h.as_integer()) {
                        let max = i64::try_from(max_history).unwrap_or(i64::MAX);
                        t.insert("history".into(), toml::Value::Integer(h.min(max)));
                    }
                    Some(t)
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The gallery's folder: `given`, else `./examples/web`, else the one in the
/// source tree this binary was built from.
///
/// Errors: the folder (given or found) holds no `index.html`.
pub fn locate(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match given {
        Some(p) => vec![p.to_path_buf()],
        None => vec![
            PathBuf::from("examples/web"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/web"),
        ],
    };
    for dir in &candidates {
        if dir.join("index.html").is_file() {
            return Ok(dir.canonicalize().unwrap_or_else(|_| dir.clone()));
        }
    }
    bail!(
        "--examples: no examples gallery at {}: run herald from the repository's root, \
         or pass --examples-dir with the path of its examples/web folder",
        candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    )
}

/// What is missing for every page to work: the libraries `npm ci` bundles
/// into `vendor/` (the editor's Yjs, the dashboard's uPlot). `None` when
/// they are there.
pub fn missing_libraries(dir: &Path) -> Option<String> {
    let missing: Vec<&str> = ["vendor/yjs.mjs", "vendor/uplot.mjs", "vendor/uplot.css"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "--examples: the editor and dashboard pages need libraries from npm that are not installed \
         ({} missing in {}): run `npm ci --prefix {}` once, then start Herald again",
        missing.join(", "),
        dir.display(),
        dir.display()
    ))
}

/// The routes: `GET /examples/...` from `dir`; `/examples` redirects to
/// `/examples/` (relative links in the pages need the slash, and so does
/// every page folder: `/examples/chat?room=a` → `/examples/chat/?room=a`).
///
/// Only what lies in `dir` is served, judged on the percent-decoded path
/// and on the file the path resolves to (symbolic links included): not the
/// npm folder, the manifests, the build script or dotfiles. Anything else
/// is Herald's JSON 404.
pub fn router(dir: PathBuf) -> Router {
    let root = Arc::new(dir.canonicalize().unwrap_or(dir));
    let files = ServeDir::new(root.as_ref()).append_index_html_on_directories(true);
    let page = axum::routing::get(move |req: Request<Body>| {
        let (files, root) = (files.clone(), root.clone());
        async move { serve(&root, files, req).await }
    });
    Router::new()
        .route(
            "/examples",
            axum::routing::get(|req: Request<Body>| async move {
                redirect("/examples/", req.uri().query())
            }),
        )
        .route("/examples/", page.clone())
        .route("/examples/{*path}", page)
}

/// Longest path segment served, in bytes (file systems' name limit).
const MAX_SEGMENT: usize = 255;

async fn serve(root: &Path, files: ServeDir, req: Request<Body>) -> Response {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/examples").unwrap_or(&path).to_owned();
    // Judged as the file system will see it: decoded.
    let Ok(decoded) = percent_encoding::percent_decode_str(&rest).decode_utf8() else {
        return not_found();
    };
    let hidden = decoded.contains(['\\', '\0'])
        || decoded.split('/').any(|s| {
            s.starts_with('.')
                || s == "node_modules"
                || s.len() > MAX_SEGMENT
                || matches!(s, "package.json" | "package-lock.json" | "build.mjs")
        });
    if hidden {
        return not_found();
    }
    // The file the path names, links resolved, must lie inside the gallery.
    let target = match tokio::fs::canonicalize(root.join(decoded.trim_start_matches('/'))).await {
        Ok(t) if t.starts_with(root) => t,
        _ => return not_found(),
    };
    let is_dir = tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_dir());
    if is_dir && !rest.ends_with('/') {
        // A page folder without its slash: its relative links would
        // resolve one level up.
        return redirect(&format!("{path}/"), req.uri().query());
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = match rest.parse() {
        Ok(u) => u,
        Err(_) => return not_found(),
    };
    let mut r = match files.oneshot(Request::from_parts(parts, body)).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    };
    if r.status() == StatusCode::NOT_FOUND {
        return not_found();
    }
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn not_found() -> Response {
    herald_http::ApiError::not_found().into_response()
}

/// A redirect to `to`, keeping the request's query (`?room=a`).
fn redirect(to: &str, query: Option<&str>) -> Response {
    let to = match query {
        Some(q) => format!("{to}?{q}"),
        None => to.to_owned(),
    };
    match HeaderValue::from_str(&to) {
        Ok(v) => (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, v)]).into_response(),
        Err(_) => not_found(),
    }
}

/// Publishes this node's figures to [`DASHBOARD_TOPIC`] once a second, as
/// event `metrics`: `{"at": <unix ms>, "connections": {"sse", "ws",
/// "poll"}, "published_per_s", "delivered_per_s", "topics"}`. Runs until
/// the process ends; a refused publish (engine down) is logged once per
/// failure streak and tried again at the next tick.
pub async fn run_dashboard_generator(hub: Hub) {
    use std::sync::atomic::Ordering::Relaxed;
    let topic = Topic::new(DASHBOARD_TOPIC).expect("a valid topic");
    let m = hub.metrics().clone();
    let mut tick = tokio::time::interval(DASHBOARD_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (
        m.events_published.load(Relaxed),
        m.events_delivered.load(Relaxed),
    );
    let mut last_at = tokio::time::Instant::now();
    let mut failing = false;
    loop {
        tick.tick().await;
        let now = (
            m.events_published.load(Relaxed),
            m.events_delivered.load(Relaxed),
        );
        let secs = last_at.elapsed().as_secs_f64().max(0.001);
        last_at = tokio::time::Instant::now();
        let rate = |a: u64, b: u64| ((a.saturating_sub(b)) as f64 / secs * 10.0).round() / 10.0;
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let data = serde_json::json!({
            "at": at,
            "connections": {
                "sse": m.open(herald_core::Transport::Sse),
                "ws": m.open(herald_core::Transport::WebSocket),
                "poll": m.open(herald_core::Transport::Poll),
            },
            "published_per_s": rate(now.0, last.0),
            "delivered_per_s": rate(now.1, last.1),
            "topics": m.usage().0,
        });
        last = now;
        let event = NewEvent::new(topic.clone(), Data::from_json(&data)).named("metrics");
        match hub.publish(event).await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "the examples' dashboard generator could not publish");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_hook_follows_the_setting() {
        let with = policy_tables(true, 1000);
        let without = policy_tables(false, 100);
        assert_eq!(with.len(), 7);
        assert_eq!(with[0]["publish_hook"], toml::Value::Boolean(true));
        assert_eq!(without[0]["publish_hook"], toml::Value::Boolean(false));
        assert_eq!(
            with[1]["pattern"].as_str(),
            Some("examples/editor/*/carets")
        );
    }

    #[test]
    fn a_folder_without_a_gallery_is_refused_with_its_path() {
        let e = locate(Some(Path::new("/nonexistent/gallery"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/gallery"), "{e}");
        assert!(e.to_string().contains("--examples-dir"), "{e}");
    }
}
