//! Stop strings over streamed text: text that might be the start of a stop string is held
//! back until it is known not to be, so no stream ever shows part of a stop string, and the
//! output ends right before the first one.

use mm_chat::output::partial_tag_len;

pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops, held: String::new(), stopped: false }
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds text; returns what can be shown now, and whether a stop string was reached.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(text);
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            self.held.truncate(at);
            self.stopped = true;
            return (std::mem::take(&mut self.held), true);
        }
        let stops: Vec<&str> = self.stops.iter().map(String::as_str).collect();
        let keep = partial_tag_len(&self.held, &stops);
        let ready = self.held.len() - keep;
        let out = self.held[..ready].to_string();
        self.held.drain(..ready);
        (out, false)
    }

    /// What is still held back (the output ended without completing a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_stops_and_cuts_before_the_first() {
        let mut m = StopMatcher::new(vec!["\nUser:".into(), "END".into()]);
        assert_eq!(m.push("Hello"), ("Hello".into(), false));
        assert_eq!(m.push(" wor\nUs"), (" wor".into(), false));
        assert_eq!(m.push("x"), ("\nUsx".into(), false));
        assert_eq!(m.push("ab EN"), ("ab ".into(), false));
        assert_eq!(m.push("D tail"), ("".into(), true));
        assert!(m.stopped());
        let mut m = StopMatcher::new(vec!["。".into()]);
        assert_eq!(m.push("你好。再见"), ("你好".into(), true));
        // A multi-byte stop string whose first character has arrived is held back.
        let mut m = StopMatcher::new(vec!["再见。".into()]);
        assert_eq!(m.push("你好再"), ("你好".into(), false));
        assert_eq!(m.push("来"), ("再来".into(), false));
        let mut m = StopMatcher::new(Vec::new());
        assert_eq!(m.push("abc"), ("abc".into(), false));
        assert_eq!(m.finish(), "");
    }
}
