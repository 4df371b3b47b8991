//! Generates the Pub/Sub API's client and server (for the tests' fake) from `proto/pubsub.proto`.
//! protox compiles the file in Rust, so no `protoc` has to be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/pubsub.proto");
    let descriptors = protox::compile(["proto/pubsub.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
