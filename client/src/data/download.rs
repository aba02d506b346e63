//! Downloading one file over HTTP(S) into a partial file, resuming it with a `Range` request
//! where the server allows, with a progress bar. Whether the bytes are the right ones is the
//! caller's question (a SHA-256 check); this module only gets them.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::FetchError;

/// The HTTP agent: redirects followed (PyPI's file URLs redirect), statuses handled here,
/// and a read that stalls for a minute fails rather than hanging.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(None)
            .timeout_per_call(None)
            .user_agent(concat!("graft/", env!("CARGO_PKG_VERSION")))
            .build(),
    )
}

fn bar(label: &str, total: Option<u64>, start: u64, show: bool) -> ProgressBar {
    let pb = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::no_length(),
    };
    if show {
        pb.set_draw_target(ProgressDrawTarget::stderr());
    } else {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{msg:40!} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta:>4}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(label.to_string());
    pb.set_position(start);
    pb
}

/// Gets `url` into `part`, continuing from the bytes already there when the server answers
/// a `Range` request with 206; a 200 starts the file again. An interrupted body leaves what
/// arrived in `part` for the next attempt to resume.
///
/// # Errors
/// [`FetchError::Http`] for a refused request or a body cut short, [`FetchError::Io`] when
/// `part` cannot be written.
pub(crate) fn download(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    label: &str,
    show_progress: bool,
) -> Result<(), FetchError> {
    let http = |reason: String| FetchError::Http {
        url: url.to_string(),
        reason,
    };
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| http(e.to_string()))?;
    let status = resp.status().as_u16();
    let append = match status {
        206 => true,
        200 => false,
        416 if have > 0 => {
            // The partial file is not a prefix the server knows: start again.
            std::fs::remove_file(part).map_err(|e| FetchError::io(part, e))?;
            return Err(http(format!(
                "HTTP 416 for bytes {have}- (the partial file was dropped)"
            )));
        }
        s => return Err(http(format!("HTTP {s}"))),
    };
    let length = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let start = if append { have } else { 0 };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .map_err(|e| FetchError::io(part, e))?;
    let pb = bar(label, length.map(|l| l + start), start, show_progress);
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    let result = loop {
        match body.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = file.write_all(&buf[..n]) {
                    break Err(FetchError::io(part, e));
                }
                got += n as u64;
                pb.inc(n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(http(format!("body cut short after {got} bytes: {e}"))),
        }
    };
    pb.finish_and_clear();
    file.flush().map_err(|e| FetchError::io(part, e))?;
    result?;
    if let Some(l) = length
        && got != l
    {
        return Err(http(format!("body cut short: {got} of {l} bytes")));
    }
    Ok(())
}
