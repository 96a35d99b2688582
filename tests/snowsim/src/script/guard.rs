//! A lexical estimate of how much native stack boa's parser and compiler need for a source, so
//! that a pathologically nested script (`((((…))))` thousands deep, `!!!!…x`) is refused before it
//! can overflow the worker's stack: a stack overflow aborts the whole process.
//!
//! The parser recurses once per bracket and once per token of a prefix/right-associative chain
//! (`!`, `new`, `a ? b :`, `x = y =`, `a =>`, `if (a) if (b)`). The estimate charges every open
//! bracket and every token since the last `;` or `,` of each open level; brackets, comments,
//! strings, template literals and regular expressions are told apart well enough for that.
//! Costs were measured on debug builds of boa 0.21 (optimised builds need less).

/// Stack charged per open `(`, `[`, `{` or `${` (measured: parenthesised expression 117 KiB,
/// array 100 KiB, object literal 133 KiB, template substitution 106 KiB per level).
const BRACKET_COST: usize = 136 * 1024;
/// Stack charged per other token on the current chain (measured: `new` 18 KiB, `a =>` 21 KiB,
/// `a ? 1 :` 17 KiB, `!` 12 KiB, `if (a)` 14 KiB per level).
const TOKEN_COST: usize = 24 * 1024;

/// Keywords after which a `/` starts a regular expression rather than a division.
const EXPRESSION_KEYWORDS: &[&str] = &[
    "await",
    "case",
    "delete",
    "do",
    "else",
    "in",
    "instanceof",
    "new",
    "of",
    "return",
    "throw",
    "typeof",
    "void",
    "yield",
];

/// Checks that parsing `source` needs at most `budget` bytes of stack by the estimate above;
/// the error is a message for [`super::ScriptError::Parse`].
pub(super) fn check_nesting(source: &str, budget: usize) -> Result<(), String> {
    let estimate = Estimate::of(source.as_bytes());
    if estimate <= budget {
        Ok(())
    } else {
        Err(format!(
            "the script nests too deeply to be parsed safely (estimated {} KiB of parser stack, \
             at most {} KiB)",
            estimate / 1024,
            budget / 1024
        ))
    }
}

#[derive(Default)]
struct Estimate {
    /// Open brackets: the opener (`$` for `${`) and the token count of the level outside it.
    levels: Vec<(u8, usize)>,
    /// Stack charged for the open brackets and the chains outside them.
    base: usize,
    /// Tokens since the last `;` or `,` on the current level.
    count: usize,
    /// Largest charge seen.
    max: usize,
    /// Whether the last token ends a value (then `/` divides).
    after_value: bool,
}

impl Estimate {
    fn of(src: &[u8]) -> usize {
        let mut state = Self::default();
        let mut i = 0;
        while i < src.len() {
            i = state.step(src, i);
        }
        state.max
    }

    /// Consumes the token or trivia at `i`; returns where the next one starts.
    fn step(&mut self, src: &[u8], i: usize) -> usize {
        let byte = src[i];
        let next = src.get(i + 1).copied();
        match byte {
            b if b.is_ascii_whitespace() => i + 1,
            b'/' if next == Some(b'/') => skip_until(src, i + 2, b"\n"),
            b'/' if next == Some(b'*') => skip_until(src, i + 2, b"*/"),
            b'/' if !self.after_value => {
                self.token(true);
                skip_word(src, skip_regex(src, i + 1))
            }
            b'\'' | b'"' => {
                self.token(true);
                skip_string(src, i + 1, byte)
            }
            b'`' => {
                self.token(true);
                self.template(src, i + 1)
            }
            b'(' | b'[' | b'{' => {
                self.open(byte);
                i + 1
            }
            b')' | b']' | b'}' => {
                if self.close() == Some(b'$') {
                    self.template(src, i + 1)
                } else {
                    i + 1
                }
            }
            b';' | b',' => {
                self.count = 0;
                self.after_value = false;
                i + 1
            }
            b if is_word_byte(b) => {
                let end = skip_word(src, i);
                let word = &src[i..end];
                let keyword = EXPRESSION_KEYWORDS.iter().any(|k| k.as_bytes() == word);
                self.token(!keyword);
                end
            }
            _ => {
                self.token(false);
                i + 1
            }
        }
    }

    fn token(&mut self, ends_value: bool) {
        self.count += 1;
        self.after_value = ends_value;
        self.max = self.max.max(self.base + self.count * TOKEN_COST);
    }

    fn open(&mut self, opener: u8) {
        self.levels.push((opener, self.count));
        self.base += self.count * TOKEN_COST + BRACKET_COST;
        self.count = 0;
        self.after_value = false;
        self.max = self.max.max(self.base);
    }

    /// Closes the innermost bracket (a stray closer is just a token); returns its opener.
    fn close(&mut self) -> Option<u8> {
        let Some((opener, outer)) = self.levels.pop() else {
            self.token(true);
            return None;
        };
        self.base -= outer * TOKEN_COST + BRACKET_COST;
        self.count = outer;
        self.token(true);
        Some(opener)
    }

    /// Scans template text from `i`; a `${` opens a level whose `}` resumes the text.
    fn template(&mut self, src: &[u8], mut i: usize) -> usize {
        while i < src.len() {
            match src[i] {
                b'\\' => i += 2,
                b'`' => {
                    self.after_value = true;
                    return i + 1;
                }
                b'$' if src.get(i + 1) == Some(&b'{') => {
                    self.open(b'$');
                    return i + 2;
                }
                _ => i += 1,
            }
        }
        src.len()
    }
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

fn skip_word(src: &[u8], mut i: usize) -> usize {
    while i < src.len() && is_word_byte(src[i]) {
        i += 1;
    }
    i
}

/// The index after the first `end` at or after `i` (or the end of `src`).
fn skip_until(src: &[u8], i: usize, end: &[u8]) -> usize {
    src.get(i..)
        .and_then(|rest| rest.windows(end.len()).position(|w| w == end))
        .map_or(src.len(), |at| i + at + end.len())
}

/// The index after the closing `quote` (strings end at a line break too).
fn skip_string(src: &[u8], mut i: usize, quote: u8) -> usize {
    while i < src.len() {
        match src[i] {
            b'\\' => i += 2,
            b'\n' => return i,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    src.len()
}

/// The index after a regular expression body whose opening `/` is before `i`.
fn skip_regex(src: &[u8], mut i: usize) -> usize {
    let mut in_class = false;
    while i < src.len() {
        match src[i] {
            b'\\' => i += 2,
            b'\n' => return i,
            b'[' => {
                in_class = true;
                i += 1;
            }
            b']' => {
                in_class = false;
                i += 1;
            }
            b'/' if !in_class => return i + 1,
            _ => i += 1,
        }
    }
    src.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(src: &str) -> usize {
        Estimate::of(src.as_bytes())
    }

    #[test]
    fn brackets_cost_per_open_level_and_chains_per_token() {
        assert_eq!(estimate("a;"), TOKEN_COST);
        assert_eq!(estimate("((a))"), 2 * BRACKET_COST + TOKEN_COST);
        assert_eq!(estimate("f(a); g(b);"), BRACKET_COST + 2 * TOKEN_COST);
        assert_eq!(estimate("!!!!a"), 5 * TOKEN_COST);
        assert_eq!(estimate("x = !a, y = !b;"), 4 * TOKEN_COST);
    }

    #[test]
    fn brackets_in_strings_comments_regexes_and_template_text_are_not_counted() {
        let src = "var s = '((((', t = \"[[[[\"; // ((((\n/* {{{{ */ var r = /[(]{2}\\//g; \
                   var u = `((((${ a }))))`;";
        assert_eq!(estimate(src), BRACKET_COST + 5 * TOKEN_COST);
    }

    #[test]
    fn a_template_substitution_is_a_level_and_division_is_not_a_regex() {
        assert_eq!(estimate("`${`${a}`}`"), 2 * BRACKET_COST + 3 * TOKEN_COST);
        assert_eq!(estimate("a / b / (c)"), BRACKET_COST + 5 * TOKEN_COST);
    }

    #[test]
    fn stray_closers_and_unterminated_literals_do_not_panic() {
        for src in ["))]}", "'abc", "`${", "/* x", "/abc", "\\", "${}}}`", "é(ü"] {
            estimate(src);
        }
    }

    #[test]
    fn the_check_refuses_only_over_the_budget() {
        assert!(check_nesting("((a))", 2 * BRACKET_COST + TOKEN_COST).is_ok());
        let refusal = check_nesting("((a))", 2 * BRACKET_COST).expect_err("over budget");
        assert!(refusal.contains("nests too deeply"), "{refusal}");
    }
}
