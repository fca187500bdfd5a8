//! Fuzzes the banner engine's reply parsing: arbitrary bytes from a "server", read as replies
//! under each framing, matched, searched for capabilities and escaped for the log. Nothing
//! may panic, and every reply stays under the caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resmon_probes::banner::{read_reply, Framing, Matcher, MAX_LINE, MAX_REPLY};
use resmon_probes::{escape_bytes, Progress};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else { return };
    let framing = match selector % 3 {
        0 => Framing::Line,
        1 => Framing::Smtp,
        _ => Framing::Tagged("r1".into()),
    };
    let progress = Progress::default();
    let mut reader = stream;
    let prefix = Matcher::Prefix("220".into());
    futures::executor::block_on(async {
        for _ in 0..64 {
            match read_reply(&mut reader, &framing, &progress).await {
                Ok(reply) => {
                    let size: usize = reply.lines().map(|l| l.len() + 2).sum();
                    assert!(size <= MAX_REPLY + MAX_LINE + 2);
                    assert!(reply.lines().all(|l| l.len() < MAX_LINE));
                    let _ = prefix.matches(&reply);
                    let _ = reply.has_capability("STARTTLS");
                    for line in reply.lines() {
                        let escaped = escape_bytes(line);
                        assert!(escaped.is_ascii());
                    }
                }
                Err(_) => break,
            }
        }
    });
});
