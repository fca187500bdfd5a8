//! The control API: bring a resource or a group online or offline, clear a failed resource,
//! list recent events. Served over HTTP on a Unix socket (`agent.control_socket`, mode 0660,
//! group `resmon` when that group exists), so that only root and the `resmon` group can steer
//! the agent; the TCP endpoint stays read-only.
//!
//! | request | effect |
//! | --- | --- |
//! | `POST /api/v1/groups/{g}/online` / `offline` | every resource of the group |
//! | `POST /api/v1/groups/{g}/resources/{r}/online` / `offline` / `clear` | one resource |
//! | `POST /api/v1/maintenance/on` / `off` | the node in or out of maintenance |
//! | `POST /api/v1/node/drain[?node=N]` | pause a node (this one by default) and move its groups |
//! | `POST /api/v1/node/resume[?node=N][&failback=true]` | resume it (and move its groups back) |
//! | `POST /api/v1/groups/{g}/maintenance/on` / `off` | a group |
//! | `POST /api/v1/groups/{g}/resources/{r}/maintenance/on` / `off` | a resource |
//! | `GET /api/v1/status`, `GET /api/v1/events` | as on the TCP endpoint |
//!
//! An administrator's offline is `offline_by_admin`: never restarted, never failed over. A
//! refused request answers 404 (unknown name) or 409 (the policy refused) with the reason, and
//! changes nothing.

use crate::events::{Event, MaintenanceChanged};
use crate::maintenance::Target;
use crate::runtime::{Admins, Views};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use resmon_policies::AdminCommand;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What the control API reads and steers.
#[derive(Clone)]
pub struct ControlApi {
    /// What it shows: status and events.
    pub views: Views,
    /// What it steers: each group's admin handle.
    pub admins: Admins,
}

/// Opens the control socket (replacing a stale one) with mode 0660 and group `resmon` if it
/// exists.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Ok(Some(group)) = nix::unistd::Group::from_name("resmon") {
        let _ = nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(0)), Some(group.gid));
    }
    Ok(listener)
}

/// Serves the control API until the process exits, within [`crate::listen::CONTROL`].
pub async fn serve(listener: tokio::net::UnixListener, api: ControlApi) {
    let metrics = api.views.sink.metrics_handle();
    let handle = move |req: Request<Incoming>| {
        let api = api.clone();
        async move { respond(req, &api).await }
    };
    crate::listen::serve(listener, crate::listen::CONTROL, metrics, handle).await;
}

async fn respond(req: Request<Incoming>, api: &ControlApi) -> Response<Full<Bytes>> {
    let path: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(String::from)
        .collect();
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["api", "v1", "status"]) => json(
            StatusCode::OK,
            &api.views.status.snapshot(
                api.views.coordinator.view(),
                api.views.maintenance.snapshot(),
            ),
        ),
        (&Method::GET, ["api", "v1", "events"]) => json(StatusCode::OK, &api.views.sink.recent()),
        (&Method::POST, ["api", "v1", "maintenance", on]) => maintenance(api, Target::Node, on),
        (&Method::POST, ["api", "v1", "node", action @ ("drain" | "resume")]) => {
            let query = |key: &str| {
                req.uri().query().and_then(|q| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                        .filter(|v| !v.is_empty())
                        .map(String::from)
                })
            };
            let node = query("node");
            let answer = if *action == "drain" {
                api.views.coordinator.drain(node).await
            } else {
                let failback = query("failback").is_some_and(|v| v == "true");
                api.views.coordinator.resume(node, failback).await
            };
            match answer {
                Ok(text) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "ok": true, "result": text }),
                ),
                Err(why) => refuse(StatusCode::CONFLICT, why),
            }
        }
        (&Method::POST, ["api", "v1", "groups", group, "maintenance", on]) => {
            if find_group(api, group).is_none() {
                return refuse(StatusCode::NOT_FOUND, format!("no group {group:?}"));
            }
            maintenance(api, Target::Group(group.to_string()), on)
        }
        (
            &Method::POST,
            ["api", "v1", "groups", group, "resources", resource, "maintenance", on],
        ) => {
            let Some(admin) = find_group(api, group) else {
                return refuse(StatusCode::NOT_FOUND, format!("no group {group:?}"));
            };
            if admin.find(resource).is_none() {
                return refuse(
                    StatusCode::NOT_FOUND,
                    format!("no resource {resource:?} in group {group:?}"),
                );
            }
            maintenance(
                api,
                Target::Resource(group.to_string(), resource.to_string()),
                on,
            )
        }
        (&Method::POST, ["api", "v1", "groups", group, "move"]) => {
            // `?to=NODE`; without it, the best other node.
            let to = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("to="))
                    .filter(|n| !n.is_empty())
                    .map(String::from)
            });
            match api.views.coordinator.move_group(group, to).await {
                Ok(to) => json(
                    StatusCode::OK,
                    &serde_json::json!({"group": group, "move": "requested", "to": to}),
                ),
                Err(why) => refuse(StatusCode::CONFLICT, format!("{group}: {why}")),
            }
        }
        (&Method::POST, ["api", "v1", "groups", group, action]) => {
            let command = match *action {
                "online" => AdminCommand::GroupOnline,
                "offline" => AdminCommand::GroupOffline,
                _ => {
                    return refuse(
                        StatusCode::NOT_FOUND,
                        format!("unknown group action {action:?}: online or offline"),
                    )
                }
            };
            apply(api, group, None, command).await
        }
        (&Method::POST, ["api", "v1", "groups", group, "resources", resource, action]) => {
            let Some(admin) = find_group(api, group) else {
                return refuse(StatusCode::NOT_FOUND, format!("no group {group:?}"));
            };
            let Some(id) = admin.find(resource) else {
                return refuse(
                    StatusCode::NOT_FOUND,
                    format!("no resource {resource:?} in group {group:?}"),
                );
            };
            let command = match *action {
                "online" => AdminCommand::Online(id),
                "offline" => AdminCommand::Offline(id),
                "clear" => AdminCommand::Clear(id),
                _ => {
                    return refuse(
                        StatusCode::NOT_FOUND,
                        format!("unknown resource action {action:?}: online, offline or clear"),
                    )
                }
            };
            apply(api, group, Some(resource), command).await
        }
        _ => refuse(
            StatusCode::NOT_FOUND,
            format!("no such request: {} {}", req.method(), req.uri().path()),
        ),
    }
}

/// Puts the node, a group or a resource in maintenance or takes it out: kept first, then the
/// groups and the coordinator are told.
fn maintenance(api: &ControlApi, target: Target, on: &str) -> Response<Full<Bytes>> {
    let on = match on {
        "on" => true,
        "off" => false,
        other => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("unknown maintenance action {other:?}: on or off"),
            )
        }
    };
    let name = match &target {
        Target::Node => "node".to_string(),
        Target::Group(g) => g.clone(),
        Target::Resource(g, r) => format!("{g}/{r}"),
    };
    match api.views.maintenance.set(&target, on) {
        Ok(changed) => {
            if changed {
                MaintenanceChanged { target: &name, on }.emit(&api.views.sink);
                api.views
                    .sink
                    .metrics()
                    .node_maintenance(api.views.maintenance.node());
                api.views.coordinator.maintenance_changed();
            }
            json(
                StatusCode::OK,
                &serde_json::json!({ "ok": true, "target": name, "maintenance": on, "changed": changed }),
            )
        }
        Err(why) => refuse(StatusCode::INTERNAL_SERVER_ERROR, why),
    }
}

fn find_group(api: &ControlApi, group: &str) -> Option<crate::runtime::group::GroupAdmin> {
    api.admins
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(group)
        .cloned()
}

async fn apply(
    api: &ControlApi,
    group: &str,
    resource: Option<&str>,
    command: AdminCommand,
) -> Response<Full<Bytes>> {
    let Some(admin) = find_group(api, group) else {
        return refuse(StatusCode::NOT_FOUND, format!("no group {group:?}"));
    };
    let target = resource.map_or_else(|| format!("group {group}"), |r| format!("{group}/{r}"));
    tracing::info!(%target, ?command, "administrator's command");
    match admin.admin(command).await {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "target": target }),
        ),
        Err(why) => refuse(StatusCode::CONFLICT, format!("{target}: {why}")),
    }
}

fn refuse(status: StatusCode, why: String) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "ok": false, "error": why }))
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_string(value).unwrap_or_default(),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
