//! The Pub/Sub API's messages, its client, and a server (the tests' fake serves it), generated
//! at build time from the project's own `proto/pubsub.proto` (see `build.rs`).

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/eventbus.v1.rs"));
}

pub use generated::*;
