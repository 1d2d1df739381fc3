//! HTTP/1.1 chunked transfer coding, decoded on the client side: tests that read a stream on a
//! raw socket (to stall it, or to see the wire) get its payload back in the pieces it arrived.

/// Incremental HTTP/1.1 chunked-body decoder (a raw socket's body arrives in arbitrary pieces).
#[derive(Default)]
pub struct Dechunker {
    pending: Vec<u8>,
    state: ChunkState,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Done,
}

impl Dechunker {
    /// Takes the next bytes of the body, cut anywhere, and returns the payload they complete
    /// (a chunk cut short gives what arrived of it). Asserts the framing: a chunk's data is
    /// followed by CRLF.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(eol) = self.pending[at..].windows(2).position(|w| w == b"\r\n") else { break };
                    let line = std::str::from_utf8(&self.pending[at..at + eol]).expect("chunk size line");
                    let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                        .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                    at += eol + 2;
                    self.state = if size == 0 { ChunkState::Done } else { ChunkState::Data(size) };
                }
                ChunkState::Data(n) => {
                    let take = n.min(self.pending.len() - at);
                    out.extend_from_slice(&self.pending[at..at + take]);
                    at += take;
                    if take < n {
                        self.state = ChunkState::Data(n - take);
                        break;
                    }
                    self.state = ChunkState::DataEnd;
                }
                ChunkState::DataEnd => {
                    if self.pending.len() - at < 2 {
                        break;
                    }
                    assert_eq!(&self.pending[at..at + 2], b"\r\n", "chunk not followed by CRLF");
                    at += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Done => break,
            }
        }
        self.pending.drain(..at);
        out
    }
}
