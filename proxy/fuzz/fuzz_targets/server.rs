//! Shared by the `http1` and `http2` targets: arbitrary bytes as one caller connection to
//! the gateway's caller-facing server, on a paused clock so timeouts cost no wall time.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn drive(data: &[u8], http2: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(proxy::fuzzing::serve(server, http2));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut sink),
        )
        .await;
        drop(client);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), served).await;
    });
}
