//! The CLI's half: plain blocking std IO.

use super::{MAX_RESPONSE, Request, Response, socket_path};
use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why [`send`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens: the socket is missing, or a crashed run left it.
    #[error("no linetokd daemon is running (no control socket at {})", path.display())]
    NoSocket {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket file exists but nothing answers on it.
    #[error("no linetokd daemon is running (nothing answers on the control socket at {})", path.display())]
    NotListening {
        /// The socket path.
        path: PathBuf,
    },
    /// Connecting or talking failed otherwise (permission, timeout).
    #[error("while {what} the control socket at {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The daemon closed the connection without an answer: it stopped
    /// (or was killed) while working on the request. A request it had
    /// recorded by then is carried out when it starts again.
    #[error(
        "the daemon on {} stopped before it answered; if it had recorded the request, it \
         carries it out when it starts again (`linetokd status` lists open requests under \
         their group)",
        path.display()
    )]
    NoAnswer {
        /// The socket path.
        path: PathBuf,
    },
    /// The daemon's answer could not be read.
    #[error("the daemon's answer on {} is not understood: {detail}", path.display())]
    BadResponse {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// Sends `request` to the daemon whose state directory is `state_dir` and
/// waits (at most `timeout`) for its answer. Blocking: for the CLI.
///
/// # Errors
/// [`ClientError::NoSocket`] / [`ClientError::NotListening`] when no daemon
/// runs; the others when the exchange fails.
pub fn send(
    state_dir: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let path = socket_path(state_dir);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ClientError::Io { what, path, source }
    };
    let mut stream = match StdUnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ClientError::NoSocket { path });
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(ClientError::NotListening { path });
        }
        Err(e) => return Err(io("connecting to", &path)(e)),
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io("setting up", &path))?;
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::BadResponse {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io("writing to", &path))?;
    let mut answer = String::new();
    BufReader::new((&stream).take(MAX_RESPONSE))
        .read_line(&mut answer)
        .map_err(io("reading from", &path))?;
    if answer.is_empty() {
        return Err(ClientError::NoAnswer { path });
    }
    serde_json::from_str(answer.trim_end()).map_err(|e| ClientError::BadResponse {
        path,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChannelId;

    /// Found by an outside test: a daemon killed after it recorded a
    /// `revoke` left the CLI saying its answer was "not understood", when
    /// the request stood and was carried out after the restart.
    #[test]
    fn a_daemon_that_stops_before_answering_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap();
        // Reads the request, then goes away without a word.
        let daemon = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            line
        });
        let request = Request::Rotate {
            channel: ChannelId::new("1"),
            group: None,
        };
        let err = send(dir.path(), &request, Duration::from_secs(30)).unwrap_err();
        assert!(daemon.join().unwrap().contains("rotate"));
        assert!(matches!(err, ClientError::NoAnswer { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("stopped before it answered"), "{text}");
        assert!(text.contains("starts again"), "{text}");
    }
}
