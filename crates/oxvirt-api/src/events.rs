//! `/api/v1/events`: the event stream, as server-sent events (one JSON event per message).

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use oxvirt_controller::Controller;
use std::convert::Infallible;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

pub fn routes() -> Router<Controller> {
    Router::new().route("/api/v1/events", get(stream))
}

async fn stream(State(c): State<Controller>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let events = BroadcastStream::new(c.subscribe()).filter_map(|e| {
        let e = e.ok()?;
        let kind = match &e {
            oxvirt_model::Event::VmState { .. } => "vm-state",
            oxvirt_model::Event::VmLifecycle { .. } => "vm-lifecycle",
            oxvirt_model::Event::VmGuest { .. } => "vm-guest",
            oxvirt_model::Event::Task { .. } => "task",
            oxvirt_model::Event::Alert { .. } => "alert",
            oxvirt_model::Event::Ha { .. } => "ha",
        };
        let data = serde_json::to_string(&e).ok()?;
        Some(Ok(SseEvent::default().event(kind).data(data)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
