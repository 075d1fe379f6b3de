//! The bank's journal: `DIR/bank.journal`, one JSON record per line, appended and
//! `fdatasync`ed before the change it records is answered.
//!
//! A crash can leave the last line half written (no newline): that record was never answered,
//! so opening drops it and truncates the file. Any other line that does not parse is damage,
//! an error: the books cannot be rebuilt without it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub const FILE_NAME: &str = "bank.journal";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line} is damaged: {reason}")]
    Damaged {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: a write failed and the file could not be put back ({reason}); restart the simulator")]
    Poisoned { path: PathBuf, reason: String },
}

/// The open journal, positioned at its end.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// The length of its complete records: where a failed append is cut back to.
    len: u64,
    /// Set when a failed append could not be cut back: appending more would bury a torn line
    /// before good ones.
    poisoned: Option<String>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and reads its records, each with its line number
    /// (from 1). A torn last line is dropped and cut off the file.
    pub fn open<R: DeserializeOwned>(
        dir: &Path,
    ) -> Result<(Journal, Vec<(usize, R)>), JournalError> {
        let path = dir.join(FILE_NAME);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        if !existed {
            // The new file's directory entry must survive a crash too.
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                bytes = bytes.len() - complete,
                "dropping the torn last line of the journal (a crash mid-write)"
            );
            file.set_len(complete as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        let mut records = Vec::new();
        // Every line up to `complete` ends with a newline; an empty line is damage too.
        let lines = match bytes[..complete].strip_suffix(b"\n") {
            Some(body) => body.split(|&b| b == b'\n').collect(),
            None => Vec::new(),
        };
        for (i, line) in lines.into_iter().enumerate() {
            let record = serde_json::from_slice(line).map_err(|e| JournalError::Damaged {
                path: path.clone(),
                line: i + 1,
                reason: e.to_string(),
            })?;
            records.push((i + 1, record));
        }
        Ok((
            Journal {
                path,
                file,
                len: complete as u64,
                poisoned: None,
            },
            records,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and waits until it is on disk. On failure the file is cut back to
    /// its last complete record.
    pub fn append<R: Serialize>(&mut self, record: &R) -> Result<(), JournalError> {
        self.append_all(std::slice::from_ref(record))
    }

    /// Appends records, one line each, with one write and one `fdatasync` for all of them. On
    /// failure the file is cut back to its last complete record before them. A crash in the
    /// middle of the write may leave the first of them complete (and a torn line, dropped at
    /// opening), though none was answered: only for records that may be made again safely
    /// (account openings: the same opening again is answered as existing).
    pub fn append_all<R: Serialize>(&mut self, records: &[R]) -> Result<(), JournalError> {
        if let Some(reason) = &self.poisoned {
            return Err(JournalError::Poisoned {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let mut lines = Vec::new();
        for record in records {
            serde_json::to_writer(&mut lines, record).map_err(|e| JournalError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })?;
            lines.push(b'\n');
        }
        if lines.is_empty() {
            return Ok(());
        }
        let written = self
            .file
            .write_all(&lines)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += lines.len() as u64;
                Ok(())
            }
            Err(source) => {
                if let Err(e) = self.file.set_len(self.len) {
                    self.poisoned = Some(e.to_string());
                }
                Err(JournalError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_replay_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, none) = Journal::open::<u32>(dir.path()).unwrap();
        assert!(none.is_empty());
        j.append(&1u32).unwrap();
        j.append(&22u32).unwrap();
        drop(j);
        let path = dir.path().join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"33").unwrap();
        drop(f);
        let (mut j, records) = Journal::open::<u32>(dir.path()).unwrap();
        assert_eq!(records, [(1, 1), (2, 22)]);
        assert_eq!(fs::read(&path).unwrap(), b"1\n22\n");
        j.append(&4u32).unwrap();
        let (_, records) = Journal::open::<u32>(dir.path()).unwrap();
        assert_eq!(records.len(), 3);
    }

    #[test]
    fn a_damaged_complete_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"1\nx\n3\n").unwrap();
        let err = Journal::open::<u32>(dir.path()).unwrap_err();
        assert!(
            matches!(err, JournalError::Damaged { line: 2, .. }),
            "{err}"
        );
        fs::write(dir.path().join(FILE_NAME), b"1\n\n").unwrap();
        assert!(Journal::open::<u32>(dir.path()).is_err());
    }
}
