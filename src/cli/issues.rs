//! The candidate list of `work` and `claim`: one issue key per line (surrounding
//! whitespace trimmed, blank lines skipped), from a file or `-` (stdin).

use crate::error::Error;
use crate::key::IssueKey;

use std::collections::HashMap;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Parses a whole list: every key valid, none twice, at least one. Errors name the line.
pub fn parse_list(source: &str, text: &str) -> Result<Vec<IssueKey>, Error> {
    let mut parser = LineParser::default();
    let mut keys = Vec::new();
    for line in text.lines() {
        if let Some(key) = parser
            .line(line)
            .map_err(|e| Error::Config(format!("{source}:{e}")))?
        {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(Error::Config(format!(
            "{source}: no issue keys (expected one per line)"
        )));
    }
    Ok(keys)
}

/// Reads the list at `source` (a path, or `-` for stdin) to its end.
pub async fn read_list(source: &str) -> Result<Vec<IssueKey>, Error> {
    let text = if source == "-" {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::stdin(), &mut text)
            .await
            .map_err(|e| Error::Config(format!("cannot read the issue list from stdin: {e}")))?;
        text
    } else {
        tokio::fs::read_to_string(source)
            .await
            .map_err(|e| Error::Config(format!("cannot read the issue list {source:?}: {e}")))?
    };
    parse_list(&display(source), &text)
}

/// Follows the list at `source`: every key as its line arrives (a file is re-read for
/// appended lines every second, stdin until it closes). Invalid, repeated and non-UTF-8
/// lines are reported on stderr, naming the line, and skipped.
pub async fn follow_list(
    source: &str,
) -> Result<futures::stream::BoxStream<'static, IssueKey>, Error> {
    let name = display(source);
    let lines = if source == "-" {
        stdin_lines(name.clone())
    } else {
        let file = tokio::fs::File::open(source)
            .await
            .map_err(|e| Error::Config(format!("cannot read the issue list {source:?}: {e}")))?;
        file_lines(file, name.clone())
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut lines = lines;
        let mut parser = LineParser::default();
        while let Some(bytes) = lines.recv().await {
            let parsed = match String::from_utf8(bytes) {
                Ok(line) => parser.line(&line),
                Err(_) => Err(parser.not_text()),
            };
            match parsed {
                Ok(Some(key)) => {
                    if tx.send(key).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => eprintln!("issuelock: {name}:{e}; line skipped"),
            }
        }
    });
    Ok(futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|key| (key, rx)) },
    )
    .boxed())
}

type Lines = tokio::sync::mpsc::Receiver<Vec<u8>>;

/// Stdin's lines, read on a thread of their own: a blocking read cannot be cancelled, and
/// one on the runtime's blocking pool would keep the process from exiting (after its work
/// is done, or on a signal) until the next line or the end of the input arrived.
fn stdin_lines(name: String) -> Lines {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => return, // stdin closed: the input has ended
                Ok(_) => {
                    if tx.blocking_send(line).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("issuelock: cannot read {name}: {e}; no more issues from it");
                    return;
                }
            }
        }
    });
    rx
}

/// A file's lines, each once its newline is written; the file is re-read for appended
/// lines every second.
fn file_lines(file: tokio::fs::File, name: String) -> Lines {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut reader = BufReader::new(file);
        let mut partial = Vec::new();
        loop {
            match reader.read_until(b'\n', &mut partial).await {
                Ok(0) => {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
                Ok(_) if !partial.ends_with(b"\n") => continue, // a line being written
                Ok(_) => {}
                Err(e) => {
                    eprintln!("issuelock: cannot read {name}: {e}; no more issues from it");
                    return;
                }
            }
            if tx.send(std::mem::take(&mut partial)).await.is_err() {
                return;
            }
        }
    });
    rx
}

fn display(source: &str) -> String {
    if source == "-" {
        "<stdin>".into()
    } else {
        source.to_owned()
    }
}

use futures::StreamExt;

/// Numbers lines and remembers the keys seen, for error messages naming both lines.
#[derive(Default)]
struct LineParser {
    number: usize,
    seen: HashMap<IssueKey, usize>,
}

impl LineParser {
    /// The key on the next line, `None` for a blank one; an error starts with `<line>: `.
    fn line(&mut self, line: &str) -> Result<Option<IssueKey>, String> {
        self.number += 1;
        let text = line.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let key = IssueKey::parse(text)
            .map_err(|e| format!("{}: invalid issue key {text:?}: {e}", self.number))?;
        if let Some(first) = self.seen.get(&key) {
            return Err(format!(
                "{}: duplicate issue key {text:?} (first on line {first})",
                self.number
            ));
        }
        self.seen.insert(key.clone(), self.number);
        Ok(Some(key))
    }

    /// Counts a line that is not UTF-8 text; the error names it.
    fn not_text(&mut self) -> String {
        self.number += 1;
        format!("{}: not UTF-8 text", self.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_list("list.txt", text).unwrap_err().to_string()
    }

    #[test]
    fn a_list_of_keys() {
        let keys = parse_list("l", "a/b#1\n\n  a/b#2  \r\na/b#3").unwrap();
        let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["a/b#1", "a/b#2", "a/b#3"]);
    }

    #[test]
    fn bad_lists_name_the_offending_line() {
        assert!(err("").contains("list.txt: no issue keys"));
        assert!(err("\n \n").contains("no issue keys"));
        let dup = err("a\nb\n\na\n");
        assert!(
            dup.contains("list.txt:4: duplicate issue key \"a\" (first on line 1)"),
            "{dup}"
        );
        let long = "x".repeat(2000);
        let invalid = err(&format!("a\n{long}\n"));
        assert!(
            invalid.contains("list.txt:2: invalid issue key"),
            "{invalid}"
        );
        let control = err("a\nb\u{7}c\n");
        assert!(
            control.contains("list.txt:2: invalid issue key"),
            "{control}"
        );
    }
}
