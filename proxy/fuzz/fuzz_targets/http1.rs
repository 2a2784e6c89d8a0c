//! The gateway's caller-facing HTTP/1.1 server, in memory: arbitrary bytes as a connection,
//! every request through the gateway's rules. Nothing may panic or hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(proxy::fuzzing::serve(server, false));
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
});
