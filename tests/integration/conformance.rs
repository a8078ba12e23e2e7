//! Issue 18's conformance defects: an existence leak through an uninstalled assistant
//! (defect 5) and HTTP details the spec and the server must agree on (defect 7).

use serde_json::{json, Value};

use crate::common::*;

const ALICE: &str = "pk_alice_0123456789";
const BOB: &str = "pk_bob_0123456789";

fn sha(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

fn token_config() -> String {
    format!(
        "[auth]\nmode = \"token\"\n[[auth.tokens]]\nuser = \"alice\"\nsha256 = \"{}\"\n[[auth.tokens]]\nuser = \"bob\"\nsha256 = \"{}\"\n",
        sha(ALICE),
        sha(BOB)
    )
}

async fn ws_as(s: &Server, token: &str) -> Client {
    Client::connect_with(s, &[("authorization", &format!("Bearer {token}"))])
        .await
        .expect("connect")
}

/// Defect 5: another user's conversation whose assistant was uninstalled is
/// `conversation_not_found` (as an unknown id), for subscribe and cancel; its owner is told the
/// assistant is gone.
#[tokio::test]
async fn an_uninstalled_assistant_does_not_reveal_another_users_conversation() {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixtures()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    let s = Server::start_with(Options {
        assistants: dir.path().to_path_buf(),
        extra_config: token_config(),
        ..Options::default()
    });
    let r = http()
        .post(s.http("/api/assistants/chat/invoke"))
        .bearer_auth(ALICE)
        .json(&json!({"content": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let conv = v["conversationId"].as_str().unwrap().to_string();

    std::fs::remove_file(dir.path().join("chat.json")).unwrap();
    let s = s.restart();

    let mut bob = ws_as(&s, BOB).await;
    for frame in [
        json!({"type": "subscribe", "conversationId": conv, "since": 0}),
        json!({"type": "cancel", "conversationId": conv}),
        json!({"type": "subscribe", "conversationId": "no-such-id", "since": 0}),
        json!({"type": "cancel", "conversationId": "no-such-id"}),
    ] {
        assert_eq!(
            bob.err(frame.clone()).await,
            "conversation_not_found",
            "{frame}"
        );
    }
    // The owner is told the truth where the front names the caller (HTTP; the WebSocket
    // session answers `conversation_not_found` until it uses `Registry::get_as`).
    let r = http()
        .post(s.http("/api/assistants/chat/invoke"))
        .bearer_auth(ALICE)
        .json(&json!({"content": "again", "conversationId": conv}))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("unknown_assistant")),
        "{v}"
    );
    let r = http()
        .patch(s.http(&format!("/api/conversations/{conv}")))
        .bearer_auth(BOB)
        .json(&json!({"title": "mine now"}))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("conversation_not_found")),
        "{v}"
    );
}
