//! The commands that talk to the running agent's control API over its Unix socket: online,
//! offline, clear, maintenance, node drain and resume, move, events.

use super::{build_runtime, ControlArgs, NodeAction, Output};
use crate::config;
use std::path::PathBuf;
use std::process::ExitCode;

pub(super) fn control_socket(
    config: &std::path::Path,
    socket: Option<PathBuf>,
) -> Result<PathBuf, ExitCode> {
    match socket {
        Some(s) => Ok(s),
        None => config::load(config)
            .map(|l| l.config.agent.control_socket)
            .map_err(|errors| {
                eprintln!(
                    "{errors}\n(pass --socket to reach the agent without reading the config)"
                );
                ExitCode::FAILURE
            }),
    }
}

pub(super) fn control(args: ControlArgs, action: &str) -> ExitCode {
    let socket = match control_socket(&args.config, args.socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let path = match args.target.split_once('/') {
        Some((group, resource)) => format!("/api/v1/groups/{group}/resources/{resource}/{action}"),
        None if action == "clear" => {
            eprintln!("error: clear takes GROUP/RESOURCE");
            return ExitCode::FAILURE;
        }
        None => format!("/api/v1/groups/{}/{action}", args.target),
    };
    let body = match post_control(&socket, &path) {
        Ok((_, body)) => body,
        Err(code) => return code,
    };
    match args.output {
        Output::Json => println!("{body}"),
        Output::Table => println!("{action} {}: accepted", args.target),
    }
    ExitCode::SUCCESS
}

/// POSTs to the control API; on success the answer (parsed and as text), otherwise the
/// refusal or the error is printed and the exit code returned.
pub(super) fn post_control(
    socket: &std::path::Path,
    path: &str,
) -> Result<(serde_json::Value, String), ExitCode> {
    let runtime = build_runtime(tokio::runtime::Builder::new_current_thread())?;
    match runtime.block_on(crate::client::control(socket, hyper::Method::POST, path)) {
        Ok((status, body)) => {
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if status.is_success() {
                Ok((answer, body))
            } else {
                eprintln!("refused: {}", answer["error"].as_str().unwrap_or(&body));
                Err(ExitCode::FAILURE)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

pub(super) fn maintenance(
    action: &str,
    target: Option<&str>,
    config: &std::path::Path,
    socket: Option<PathBuf>,
) -> ExitCode {
    let socket = match control_socket(config, socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let path = match target.map(|t| t.split_once('/').ok_or(t)) {
        None => format!("/api/v1/maintenance/{action}"),
        Some(Ok((group, resource))) => {
            format!("/api/v1/groups/{group}/resources/{resource}/maintenance/{action}")
        }
        Some(Err(group)) => format!("/api/v1/groups/{group}/maintenance/{action}"),
    };
    let answer = match post_control(&socket, &path) {
        Ok((answer, _)) => answer,
        Err(code) => return code,
    };
    let what = target.unwrap_or("the node");
    match (action, answer["changed"].as_bool().unwrap_or(true)) {
        ("on", true) => println!("{what}: in maintenance"),
        ("on", false) => println!("{what}: already in maintenance"),
        (_, true) => println!("{what}: out of maintenance"),
        (_, false) => println!("{what}: was not in maintenance"),
    }
    ExitCode::SUCCESS
}

pub(super) fn node(
    action: NodeAction,
    config: &std::path::Path,
    socket: Option<PathBuf>,
) -> ExitCode {
    let socket = match control_socket(config, socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut path = match &action {
        NodeAction::Drain { .. } => "/api/v1/node/drain?".to_string(),
        NodeAction::Resume { failback, .. } => format!("/api/v1/node/resume?failback={failback}&"),
    };
    if let NodeAction::Drain { node: Some(n) } | NodeAction::Resume { node: Some(n), .. } = &action
    {
        path.push_str(&format!("node={n}"));
    }
    match post_control(&socket, &path) {
        Ok((answer, _)) => {
            println!("{}", answer["result"].as_str().unwrap_or(""));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub(super) fn move_group(
    group: &str,
    to: Option<&str>,
    config: &std::path::Path,
    socket: Option<PathBuf>,
) -> ExitCode {
    let socket = match control_socket(config, socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let path = match to {
        Some(node) => format!("/api/v1/groups/{group}/move?to={node}"),
        None => format!("/api/v1/groups/{group}/move"),
    };
    match post_control(&socket, &path) {
        Ok((answer, _)) => {
            println!(
                "move {group} to {}: requested",
                answer["to"].as_str().unwrap_or("?")
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub(super) fn events(
    config: &std::path::Path,
    socket: Option<PathBuf>,
    output: Output,
) -> ExitCode {
    let socket = match control_socket(config, socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = match build_runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(crate::client::control(
        &socket,
        hyper::Method::GET,
        "/api/v1/events",
    )) {
        Ok((_, body)) if output == Output::Json => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((_, body)) => {
            let events: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
            for e in events {
                let mut line = format!(
                    "{} {:<18}",
                    e["ts"].as_str().unwrap_or(""),
                    e["event"].as_str().unwrap_or("")
                );
                if let Some(obj) = e.as_object() {
                    for (k, v) in obj {
                        if k != "ts" && k != "event" {
                            let v = v.as_str().map_or_else(|| v.to_string(), String::from);
                            line += &format!(" {k}={v}");
                        }
                    }
                }
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
