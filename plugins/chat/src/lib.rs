//! chat: pub/sub fan-out behind HTTP.
//!
//! - `POST /rooms/:room` publishes the body on the shared channel
//!   `room:<room>` and answers how many subscriptions received it;
//! - every host running the plugin subscribes to `room:*` and keeps, per
//!   room, the last message and a message count (`GET /rooms/:room`).
//!
//! With `shared-channels = ["room:*"]`, other plugins (such as chat-digest)
//! subscribed to `room:*` receive the same messages.

use redloom_sdk::http::{Request, Response};
use redloom_sdk::pubsub::{self, Message};
use redloom_sdk::{Http, OnMessage, Result, kv};

const MAX_MESSAGE: usize = 4096;

struct Chat;

fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 64
        && room.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Http for Chat {
    fn handle(request: Request) -> Result<Response> {
        let room = request.param("room").unwrap_or_default().to_string();
        if !valid_room(&room) {
            return Ok(Response::text(
                400,
                "rooms are 1-64 letters, digits or '-'\n",
            ));
        }
        match request.method.as_str() {
            "POST" => {
                if request.body.is_empty() || request.body.len() > MAX_MESSAGE {
                    return Ok(Response::text(400, "a message is 1-4096 bytes\n"));
                }
                let receivers = pubsub::publish(&format!("room:{room}"), &request.body)?;
                Response::json(
                    202,
                    &serde_json::json!({ "room": room, "receivers": receivers }),
                )
            }
            _ => {
                let last = kv::get_string(&format!("last:{room}"))?;
                let count =
                    kv::get_string(&format!("count:{room}"))?.and_then(|c| c.parse::<u64>().ok());
                Response::json(
                    200,
                    &serde_json::json!({ "room": room, "messages": count.unwrap_or(0), "last": last }),
                )
            }
        }
    }
}

impl OnMessage for Chat {
    fn on_message(message: Message) -> Result<()> {
        let Some(room) = message.channel.strip_prefix("room:") else {
            return Ok(());
        };
        kv::set(&format!("last:{room}"), &message.payload)?;
        kv::increment(&format!("count:{room}"), 1)?;
        Ok(())
    }
}

redloom_sdk::export!(Chat => [http, message]);
