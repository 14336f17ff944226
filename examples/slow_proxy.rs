//! A TCP proxy that adds a fixed delay to every answer, to measure the
//! pipeline against a far-away SQS (AWS SQS answers in 10–30 ms; the local
//! emulator in about one): `slow_proxy LISTEN TARGET DELAY_MS`, e.g.
//! `slow_proxy 127.0.0.1:4567 127.0.0.1:4566 20`. Each chunk from the
//! target is held until DELAY_MS after it arrived, in order, so every call
//! through it takes DELAY_MS longer. See `scripts/bench-slow-sqs`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, target, delay] = args.as_slice() else {
        eprintln!("usage: slow_proxy LISTEN TARGET DELAY_MS");
        std::process::exit(2);
    };
    let delay = Duration::from_millis(delay.parse().expect("DELAY_MS is a number"));
    let listener = TcpListener::bind(listen).await.expect("listen");
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&target).await else {
                return;
            };
            // Without this, an answer written in two chunks waits for the
            // first one's ACK (Nagle), which the client delays up to 40 ms:
            // calls took 20 or 60 ms at random instead of 20.
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            // Requests go straight through; answers are held for `delay`.
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                let _ = server_write.shutdown().await;
            });
            let (chunks, mut held) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
            tokio::spawn(async move {
                while let Some((arrived, chunk)) = held.recv().await {
                    tokio::time::sleep_until(arrived + delay).await;
                    if client_write.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = client_write.shutdown().await;
            });
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match server_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if chunks.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}
