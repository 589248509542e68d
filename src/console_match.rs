//! Waiting for a pattern in a growing transcript at a cost of O(new bytes)
//! per wake-up: a lazy DFA (regex-automata) is fed each byte once and only
//! says whether a match now exists; only then does the full regex run once
//! over the window to find the match and its groups.
//!
//! Patterns match raw bytes (Unicode mode off, as `(?-u)`): `.` and negated
//! classes match any byte, so binary output never hides a match; `\d`, `\w`
//! and `\s` are ASCII. `(?u)` turns Unicode classes back on.

/// The regex for the same pattern with the same syntax as the stream.
pub(crate) fn full_regex(pattern: &str) -> Result<regex::bytes::Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(pattern)
        .unicode(false)
        .build()
}

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::util::start;

/// The streaming half of a wait: where the DFA stopped and in which state.
pub(crate) struct Stream {
    dfa: DFA,
    cache: Cache,
    state: LazyStateID,
    /// Absolute transcript offset of the next byte to feed.
    pub(crate) fed_to: u64,
}

impl Stream {
    /// None when the pattern needs what a lazy DFA cannot do (the caller
    /// then searches the whole window on each wake-up).
    pub(crate) fn new(pattern: &str, start_at: u64) -> Option<Self> {
        let dfa = DFA::builder()
            .syntax(
                regex_automata::util::syntax::Config::new()
                    .utf8(false)
                    .unicode(false),
            )
            .build(pattern)
            .ok()?;
        let mut cache = dfa.create_cache();
        let state = dfa.start_state(&mut cache, &start::Config::new()).ok()?;
        Some(Self {
            dfa,
            cache,
            state,
            fed_to: start_at,
        })
    }

    /// Feeds `bytes` (the transcript from `fed_to` on); true as soon as a
    /// match of the pattern ends within them or at their end. Err when the
    /// DFA gave up (cache thrashing, a quit byte): search the slow way.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<bool, ()> {
        for &b in bytes {
            self.state = self
                .dfa
                .next_state(&mut self.cache, self.state, b)
                .map_err(|_| ())?;
            self.fed_to += 1;
            if self.state.is_match() {
                return Ok(true);
            }
            if self.state.is_quit() {
                return Err(());
            }
        }
        let end = self
            .dfa
            .next_eoi_state(&mut self.cache, self.state)
            .map_err(|_| ())?;
        Ok(end.is_match())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feeds(pattern: &str, chunks: &[&[u8]]) -> Vec<bool> {
        let mut s = Stream::new(pattern, 0).unwrap();
        chunks.iter().map(|c| s.feed(c).unwrap()).collect()
    }

    #[test]
    fn a_match_split_across_chunks_is_seen_when_it_completes() {
        assert_eq!(
            feeds("login:", &[b"boot\r\nlog", b"in", b": "]),
            [false, false, true]
        );
    }

    #[test]
    fn end_anchored_prompts_match_only_at_the_end() {
        let p = r"# $";
        assert_eq!(
            feeds(p, &[b"echo # ", b"hi\r\n", b"ember:/# "]),
            [true, false, true]
        );
        let mut s = Stream::new(p, 0).unwrap();
        assert!(!s.feed(b"# x").unwrap());
        assert_eq!(s.fed_to, 3);
    }

    #[test]
    fn non_ascii_literals_still_match_their_utf8_bytes() {
        assert_eq!(feeds("café ☃", &["le café ☃".as_bytes()]), [true]);
        let re = full_regex("café ☃").unwrap();
        assert!(re.is_match("le café ☃".as_bytes()));
    }

    #[test]
    fn dotall_groups_and_raw_bytes_are_supported() {
        assert_eq!(
            feeds(
                r"(?s)cmd\r?\n(.*?)\r?\n# $",
                &[b"cmd\r\n\xff\xfe", b"out\r\n# "]
            ),
            [false, true]
        );
    }
}
