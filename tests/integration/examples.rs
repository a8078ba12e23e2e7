//! The repository's example assistants, end to end with the built-in offline model; the
//! README's curl example as written; `parley validate`.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Map, Value};

use crate::common::*;

fn repo_assistants() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assistants")
}

/// Args that satisfy an assistant's input schema: the first enum value for required args.
fn args_for(a: &Value) -> Value {
    let mut out = Map::new();
    for arg in a["inputArgs"].as_array().cloned().unwrap_or_default() {
        if arg["required"] == true {
            let v = arg["enum"].get(0).cloned().unwrap_or_else(|| json!("x"));
            out.insert(arg["name"].as_str().unwrap().to_string(), v);
        }
    }
    Value::Object(out)
}

#[tokio::test]
async fn every_example_assistant_runs_to_the_end_with_the_builtin_model() {
    let s = Server::start_with(Options {
        assistants: repo_assistants(),
        ..Options::default()
    });
    let list: Value = http()
        .get(s.http("/api/assistants"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = list.as_array().unwrap().clone();
    assert!(list.len() >= 4);
    let mut c = Client::connect(&s).await;
    for a in &list {
        let id = a["id"].as_str().unwrap();
        let content = a["prologues"][0].as_str().unwrap_or("hello").to_string();
        if a["automated"] == true {
            let r = http()
                .post(s.http(&format!("/api/assistants/{id}/invoke")))
                .json(&json!({"content": content, "args": args_for(a)}))
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            assert_eq!(st, 200, "{id}: {body}");
            assert_eq!(body["status"], "completed");
            assert!(
                body["output"].as_object().is_some_and(|o| !o.is_empty()),
                "{id}: {body}"
            );
            continue;
        }
        // Interactive: answer every interrupt the way a person or the page would.
        let ack = c
            .ok(json!({"type": "send", "assistant": id, "content": content, "args": args_for(a)}))
            .await;
        let conv = ack["conversationId"].as_str().unwrap().to_string();
        let mut answered = 0;
        loop {
            let ev = c.run_events(&conv).await;
            let last = &ev.last().unwrap()["event"];
            assert_eq!(last["type"], "RUN_FINISHED", "{id} failed: {last}");
            if last["outcome"]["type"] == "success" {
                break;
            }
            let i = &last["outcome"]["interrupts"][0];
            let iid = i["id"].as_str().unwrap();
            let frame = match i["reason"].as_str().unwrap() {
                "page_action" => {
                    let mut v = i["params"].clone();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("submitted".into(), json!(true));
                    }
                    json!({"type": "resume", "conversationId": conv, "interruptId": iid, "value": v})
                }
                _ => {
                    let buttons: Vec<&str> = i["buttons"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|b| b.as_str().unwrap())
                        .collect();
                    let action = if buttons.contains(&"approve") {
                        "approve"
                    } else {
                        buttons[0]
                    };
                    json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": action})
                }
            };
            c.ok(frame).await;
            answered += 1;
            assert!(answered < 10, "{id} keeps asking");
        }
        assert!(
            answered > 0 || id == "support_desk" || id == "onboarding",
            "{id} never paused"
        );
    }
}

#[tokio::test]
async fn the_readme_curl_example_works_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("curl -s http://127.0.0.1:8080")
        .expect("a curl example in the README");
    let block = &readme[start..readme[start..].find("```").map(|e| start + e).unwrap()];
    let url = block.split_whitespace().nth(2).unwrap();
    let body = block
        .split("-d '")
        .nth(1)
        .and_then(|b| b.split('\'').next())
        .unwrap();
    let path = url.trim_start_matches("http://127.0.0.1:8080");
    let s = Server::start_with(Options {
        assistants: repo_assistants(),
        ..Options::default()
    });
    let r = http()
        .post(s.http(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "completed");
    for k in ["runId", "conversationId", "output", "messages"] {
        assert!(!v[k].is_null(), "{k} in {v}");
    }
}

#[test]
fn validate_reports_every_problem_and_exits_non_zero() {
    let ok = Command::new(env!("CARGO_BIN_EXE_parley"))
        .arg("validate")
        .arg(repo_assistants())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("expense_claim (interactive"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.json"),
        r#"{"nodes": [{"id": "start", "type": "start"}, {"id": "x", "type": "llm"}, {"id": "y", "type": "teleport"}],
            "edges": [{"from": "start", "to": "nowhere"}]}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notjson.json"), "{").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_parley"))
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("broken.json: node 'x'") && err.contains("prompt"),
        "{err}"
    );
    assert!(
        err.contains("node 'y'") && err.contains("teleport"),
        "{err}"
    );
    assert!(err.contains("nowhere"), "{err}");
    assert!(err.contains("notjson.json"), "{err}");

    // The server refuses to start on them, with the same report.
    let data = tempfile::tempdir().unwrap();
    let serve = Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--assistants-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!serve.status.success());
    assert!(String::from_utf8_lossy(&serve.stderr).contains("broken.json: node 'x'"));
}

/// `GET /api/assistants/{id}` carries the graph (every node with its type and title, every
/// edge with its port) as the definition has it; `GET /api/info` the message limit the demo
/// page's counter uses.
#[tokio::test]
async fn assistant_detail_has_its_graph_and_info_the_message_limit() {
    let s = Server::start_with(Options {
        assistants: repo_assistants(),
        ..Options::default()
    });
    let def: Value = serde_json::from_slice(
        &std::fs::read(repo_assistants().join("expense_claim.json")).unwrap(),
    )
    .unwrap();
    let a = get_json(&s, "/api/assistants/expense_claim").await;
    let nodes = a["graph"]["nodes"].as_array().unwrap();
    let want: Vec<&Value> = def["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| &n["id"])
        .collect();
    let got: Vec<&Value> = nodes.iter().map(|n| &n["id"]).collect();
    assert_eq!(got, want);
    let fill = nodes.iter().find(|n| n["id"] == "fill").unwrap();
    assert_eq!(
        fill,
        &json!({"id": "fill", "type": "page_action", "title": "Fill the claim form"})
    );
    let start = nodes.iter().find(|n| n["id"] == "start").unwrap();
    assert_eq!(
        start,
        &json!({"id": "start", "type": "start"}),
        "no title, no field"
    );
    let edges = a["graph"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), def["edges"].as_array().unwrap().len());
    assert!(edges.contains(&json!({"from": "check", "to": "approval", "port": "over_limit"})));
    assert!(edges.contains(&json!({"from": "start", "to": "extract"})));

    let info = get_json(&s, "/api/info").await;
    assert_eq!(info["maxMessageChars"], json!(32768), "{info}");
}
