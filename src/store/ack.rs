//! [`Ack`]: the future of one batch's durable commit, the same type for every backend.
//!
//! A backend answers a batch through a oneshot channel (it keeps the sender with the queued
//! batch and sends the commit's outcome), or refuses it at once ([`Ack::failed`]). Dropping an
//! `Ack` cancels nothing: the batch is committed (or not) all the same.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::StoreError;

/// The sending half a backend keeps with a queued batch.
pub type AckSender = oneshot::Sender<Result<(), StoreError>>;

/// The future of a batch's durable commit. `Send`, `'static` and `Unpin`: it can be stored in
/// an actor or spawned. Dropping it does not cancel the write.
#[must_use = "the write happens anyway; await the Ack to know it is durable"]
#[derive(Debug)]
pub struct Ack {
    state: AckState,
}

#[derive(Debug)]
enum AckState {
    Waiting(oneshot::Receiver<Result<(), StoreError>>),
    Failed(Option<StoreError>),
}

impl Ack {
    /// A pair: the backend keeps the sender with the batch and answers it after the commit.
    /// A sender dropped unanswered resolves the `Ack` to [`StoreError::Closed`].
    pub fn channel() -> (AckSender, Ack) {
        let (tx, rx) = oneshot::channel();
        (
            tx,
            Ack {
                state: AckState::Waiting(rx),
            },
        )
    }

    /// A batch refused before it was queued.
    pub fn failed(error: StoreError) -> Ack {
        Ack {
            state: AckState::Failed(Some(error)),
        }
    }
}

impl Future for Ack {
    type Output = Result<(), StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            // A dropped sender means the writer went away without answering.
            AckState::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(StoreError::Closed))),
            AckState::Failed(error) => Poll::Ready(Err(error.take().unwrap_or(StoreError::Closed))),
        }
    }
}

// `Ack` must stay storable in actors and spawnable.
const _: fn() = || {
    fn check<T: Send + Unpin + 'static>() {}
    check::<Ack>();
};
