//! Words with their positions, for the two directive syntaxes: nginx's (`name args;`,
//! `{ ... }` blocks) and HAProxy's (one directive a line, under section headers). Both
//! know `#` comments and quoted strings; neither interprets anything else.

use super::{At, ImportError};

/// One word as written, quotes removed, and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub at: At,
}

/// An nginx token: a word, or one of `;`, `{`, `}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Word(Word),
    Semicolon(At),
    Open(At),
    Close(At),
}

/// Walks characters keeping line and column (1-based, columns in characters).
struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    column: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor {
            chars: text.chars().peekable(),
            line: 1,
            column: 1,
        }
    }
    fn at(&self) -> At {
        At {
            line: self.line,
            column: self.column,
        }
    }
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }
    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }
    /// A quoted string after its opening quote; backslash escapes the next character.
    fn quoted(&mut self, quote: char, start: At) -> Result<String, ImportError> {
        let mut out = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(ImportError::syntax(
                        start,
                        format!("this {quote}-quoted string is never closed"),
                    ))
                }
                Some('\\') => match self.bump() {
                    Some(c) => out.push(c),
                    None => continue,
                },
                Some(c) if c == quote => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }
}

/// Tokens of an nginx file.
pub fn nginx(text: &str) -> Result<Vec<Token>, ImportError> {
    let mut cur = Cursor::new(text);
    let mut out = Vec::new();
    while let Some(c) = cur.peek() {
        let at = cur.at();
        match c {
            c if c.is_whitespace() => {
                cur.bump();
            }
            '#' => cur.skip_comment(),
            ';' => {
                cur.bump();
                out.push(Token::Semicolon(at));
            }
            '{' => {
                cur.bump();
                out.push(Token::Open(at));
            }
            '}' => {
                cur.bump();
                out.push(Token::Close(at));
            }
            '"' | '\'' => {
                cur.bump();
                let text = cur.quoted(c, at)?;
                out.push(Token::Word(Word { text, at }));
            }
            _ => {
                let mut text = String::new();
                while let Some(c) = cur.peek() {
                    if c.is_whitespace() || matches!(c, ';' | '{' | '}') {
                        break;
                    }
                    if c == '\\' {
                        cur.bump();
                        if let Some(n) = cur.bump() {
                            text.push(n);
                        }
                        continue;
                    }
                    // `${var}` keeps its braces.
                    if c == '$' {
                        text.push(c);
                        cur.bump();
                        if cur.peek() == Some('{') {
                            while let Some(n) = cur.bump() {
                                text.push(n);
                                if n == '}' {
                                    break;
                                }
                            }
                        }
                        continue;
                    }
                    text.push(c);
                    cur.bump();
                }
                out.push(Token::Word(Word { text, at }));
            }
        }
    }
    Ok(out)
}

/// The words of each non-empty line of an HAProxy file, and whether the line was
/// indented (HAProxy does not care; messages may).
pub fn haproxy(text: &str) -> Result<Vec<Vec<Word>>, ImportError> {
    let mut cur = Cursor::new(text);
    let mut lines = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    while let Some(c) = cur.peek() {
        let at = cur.at();
        match c {
            '\n' => {
                cur.bump();
                if !words.is_empty() {
                    lines.push(std::mem::take(&mut words));
                }
            }
            c if c.is_whitespace() => {
                cur.bump();
            }
            '#' => cur.skip_comment(),
            _ => {
                let mut text = String::new();
                while let Some(c) = cur.peek() {
                    if c.is_whitespace() || c == '#' {
                        break;
                    }
                    match c {
                        '"' | '\'' => {
                            let start = cur.at();
                            cur.bump();
                            text.push_str(&cur.quoted(c, start)?);
                        }
                        '\\' => {
                            cur.bump();
                            if let Some(n) = cur.bump() {
                                text.push(n);
                            }
                        }
                        _ => {
                            text.push(c);
                            cur.bump();
                        }
                    }
                }
                words.push(Word { text, at });
            }
        }
    }
    if !words.is_empty() {
        lines.push(words);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(tokens: &[Token]) -> Vec<String> {
        tokens
            .iter()
            .map(|t| match t {
                Token::Word(w) => w.text.clone(),
                Token::Semicolon(_) => ";".into(),
                Token::Open(_) => "{".into(),
                Token::Close(_) => "}".into(),
            })
            .collect()
    }

    #[test]
    fn nginx_tokens_keep_quotes_out_and_positions_in() {
        let t = nginx("a b;\n  c \"d e\" { # x\n}\n").unwrap();
        assert_eq!(words(&t), ["a", "b", ";", "c", "d e", "{", "}"]);
        let Token::Word(w) = &t[4] else { panic!() };
        assert_eq!((w.at.line, w.at.column), (2, 5));
    }

    #[test]
    fn an_unclosed_quote_is_an_error_at_the_quote() {
        let e = nginx("a\n  'b;\n").unwrap_err();
        assert_eq!(e.at(), Some(At { line: 2, column: 3 }));
    }

    #[test]
    fn haproxy_lines_split_into_words() {
        let l = haproxy("global\n    maxconn 4096 # c\n\n  server a \"b c\"\n").unwrap();
        let texts: Vec<Vec<&str>> = l
            .iter()
            .map(|w| w.iter().map(|w| w.text.as_str()).collect())
            .collect();
        assert_eq!(
            texts,
            [
                vec!["global"],
                vec!["maxconn", "4096"],
                vec!["server", "a", "b c"]
            ]
        );
        assert_eq!(
            l[2][1].at,
            At {
                line: 4,
                column: 10
            }
        );
    }
}
