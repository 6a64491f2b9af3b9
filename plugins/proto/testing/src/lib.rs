//! Test support for the protocol crates in `plugins/proto` (a dev-dependency only): a server on
//! a loopback socket that plays a script of bytes in small pieces, so that a client's real read
//! loop meets frames split across reads. It knows no protocol and is never built into a plugin.

use std::io::{Read, Write};
use std::thread::JoinHandle;
use std::time::Duration;

/// A server on a loopback socket that writes `script` `step` bytes at a time (each piece its own
/// write, so that the client reads frames in pieces), hangs up when `hang_up`, and returns all
/// that the client sent. Returns the address to connect to and the server's thread.
///
/// # Panics
///
/// When the loopback socket cannot be bound or accepted: it is test support.
#[allow(clippy::unwrap_used)]
pub fn serve(script: Vec<u8>, step: usize, hang_up: bool) -> (String, JoinHandle<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_nodelay(true).unwrap();
        for piece in script.chunks(step.max(1)) {
            // The client may have given up already (a malformed frame).
            if stream.write_all(piece).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if hang_up {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        let mut sent = Vec::new();
        let _ = stream.read_to_end(&mut sent);
        sent
    });
    (addr, server)
}
