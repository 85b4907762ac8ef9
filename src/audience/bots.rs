//! Crawler detection from the User-Agent: the MIT-licensed crawler-user-agents list
//! (vendored in `bot_patterns.txt`, refreshed by `scripts/update-bot-patterns.sh`) plus a few
//! preview fetchers it lacks. Plain-literal patterns (three quarters of the list) go into one
//! Aho-Corasick automaton; the rest into one `RegexSet`. Both are built once.

use aho_corasick::{AhoCorasick, AhoCorasickKind};
use regex::bytes::RegexSet;
use std::sync::LazyLock;

const LIST: &str = include_str!("bot_patterns.txt");

/// Link-preview and headless fetchers seen on social traffic that the list does not carry;
/// matched case-insensitively.
const EXTRA: &[&str] = &[
    "facebookexternalhit",
    "meta-external",
    "headlesschrome",
    "bytespider",
    "tiktokspider",
];

pub struct BotMatcher {
    literals: AhoCorasick,
    extra: AhoCorasick,
    regexes: RegexSet,
}

/// `Googlebot\/` → `Googlebot/`; `None` if the pattern needs a real regex.
fn as_literal(p: &str) -> Option<String> {
    let mut out = String::with_capacity(p.len());
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('/' | '.' | '-' | ' ' | '_' | ':')) => out.push(e),
                _ => return None,
            },
            '^' | '$' | '.' | '|' | '?' | '*' | '+' | '(' | ')' | '[' | ']' | '{' | '}' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

impl BotMatcher {
    fn build() -> BotMatcher {
        let (mut lits, mut res) = (Vec::new(), Vec::new());
        for p in LIST.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            match as_literal(p) {
                Some(l) => lits.push(l),
                None => res.push(p),
            }
        }
        BotMatcher {
            // Full DFAs: a few MiB once, and the fastest scan per request.
            literals: AhoCorasick::builder()
                .kind(Some(AhoCorasickKind::DFA))
                .build(&lits)
                .expect("literal patterns build"),
            extra: AhoCorasick::builder()
                .kind(Some(AhoCorasickKind::DFA))
                .ascii_case_insensitive(true)
                .build(EXTRA)
                .expect("static patterns build"),
            regexes: RegexSet::new(&res).expect("vendored regexes compile"),
        }
    }

    /// Scans the whole list; `agent::of` caches the answer per User-Agent string.
    pub fn is_bot(&self, ua: &[u8]) -> bool {
        self.literals.is_match(ua) || self.extra.is_match(ua) || self.regexes.is_match(ua)
    }

    /// How many patterns are in use (literal, extra, regex).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.literals.patterns_len(),
            self.extra.patterns_len(),
            self.regexes.len(),
        )
    }
}

pub static BOTS: LazyLock<BotMatcher> = LazyLock::new(BotMatcher::build);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_list_loads_and_splits() {
        let (lits, extra, res) = BOTS.counts();
        assert!(lits > 1000 && res > 20, "{lits} literals, {res} regexes");
        assert_eq!(
            lits + res,
            LIST.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
        );
        assert_eq!(extra, EXTRA.len());
        assert_eq!(as_literal(r"Googlebot\/"), Some("Googlebot/".into()));
        assert_eq!(as_literal(r"AdsBot-Google([^-]|$)"), None);
    }
}
