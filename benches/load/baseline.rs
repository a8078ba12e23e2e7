//! The bare web layer, for ratios: actix-web in this process, in its own thread and actix
//! System, with 2 workers and TCP_NODELAY like Parley. `POST /invoke` reads the body and returns a fixed JSON
//! body; `GET /ws` (actix-ws) answers a text frame "N" with N fixed event-like frames.

use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytestring::ByteString;
use futures_util::StreamExt;

/// About the size of a Parley invoke answer for the bench assistant.
const FIXED_JSON: &str = r#"{"runId":"019a0000-0000-7000-8000-000000000000","conversationId":"019a0000-0000-7000-8000-000000000001","status":"completed","output":{"text":"Hello! I am Parley's built-in offline model. What can I do for you?"},"messages":[]}"#;

/// About the size of one streamed event frame.
const FIXED_EVENT: &str = r#"{"type":"event","conversationId":"019a0000-0000-7000-8000-000000000001","seq":1,"event":{"type":"TEXT_MESSAGE_CONTENT","messageId":"019a0000-0000-7000-8000-000000000002","delta":" word"}}"#;

pub struct Bare {
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<JoinHandle<()>>,
}

async fn invoke(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(FIXED_JSON)
}

async fn ws(req: HttpRequest, body: web::Payload) -> Result<HttpResponse, actix_web::Error> {
    let (response, mut session, mut stream) = actix_ws::handle(&req, body)?;
    let frame = ByteString::from_static(FIXED_EVENT);
    actix_web::rt::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                actix_ws::Message::Text(t) => {
                    let n: u64 = t.trim().parse().unwrap_or(1);
                    for _ in 0..n {
                        if session.text(frame.clone()).await.is_err() {
                            return;
                        }
                    }
                }
                actix_ws::Message::Ping(p) => {
                    let _ = session.pong(&p).await;
                }
                actix_ws::Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}

impl Bare {
    pub fn start() -> anyhow::Result<Bare> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bare-actix".into())
            .spawn(move || {
                let sys = actix_web::rt::System::new();
                sys.block_on(async move {
                    let server = match HttpServer::new(|| {
                        App::new()
                            .route("/invoke", web::post().to(invoke))
                            .route("/ws", web::get().to(ws))
                    })
                    .workers(2)
                    .tcp_nodelay(true)
                    .shutdown_timeout(1)
                    .listen(listener)
                    {
                        Ok(s) => s.run(),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(server.handle()));
                    let _ = server.await;
                });
            })?;
        let handle = rx.recv()??;
        Ok(Bare {
            addr,
            handle,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            // The stop command is sent at once; the thread's `block_on` returns when the
            // server is down, so joining waits for it.
            drop(self.handle.stop(false));
            let _ = t.join();
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.shutdown();
    }
}
