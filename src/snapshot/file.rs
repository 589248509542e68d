//! The snapshot file: an envelope (magic, format version, CRC-32 of the
//! body, the body) around the postcard encoding of the VM's state. A file
//! that is not a snapshot, is truncated, was written by another format
//! version or does not match its checksum is refused before anything of
//! it is used.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::memory_file::{open_regular, TempFile};

/// The first bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"EMBERSNP";
/// Bumped on any change to what the body holds.
pub const FORMAT_VERSION: u32 = 4;
/// No snapshot state comes near this (the guest RAM is in its own file):
/// anything larger is not a snapshot, and is not read into memory.
const MAX_FILE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: cannot {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: not an Ember snapshot (no EMBERSNP header)")]
    NotASnapshot { path: PathBuf },
    #[error("{path}: {size} bytes, larger than any Ember snapshot (is it the memory file?)")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: truncated or damaged snapshot header")]
    Truncated {
        path: PathBuf,
        #[source]
        source: postcard::Error,
    },
    #[error("{path}: snapshot format version {found}; this Ember reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: corrupted snapshot (checksum {found:#010x}, expected {expected:#010x})")]
    Checksum {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path}: {extra} bytes after the end of the snapshot")]
    Trailing { path: PathBuf, extra: usize },
    #[error("{path}: the snapshot's contents cannot be decoded")]
    Body {
        path: PathBuf,
        #[source]
        source: postcard::Error,
    },
    #[error("cannot encode the snapshot")]
    Encode(#[source] postcard::Error),
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    magic: [u8; 8],
    version: u32,
    crc32: u32,
    body: Vec<u8>,
}

/// Writes `value` to `path` (created or replaced), synced.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<u64, FileError> {
    let body = postcard::to_stdvec(value).map_err(FileError::Encode)?;
    let envelope = Envelope {
        magic: MAGIC,
        version: FORMAT_VERSION,
        crc32: crc32fast::hash(&body),
        body,
    };
    let bytes = postcard::to_stdvec(&envelope).map_err(FileError::Encode)?;
    let io = |what| {
        move |source| FileError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let temp = TempFile::create(path).map_err(io("create the snapshot file"))?;
    std::io::Write::write_all(&mut &temp.file, &bytes).map_err(io("write the snapshot file"))?;
    temp.file.sync_all().map_err(io("sync the snapshot file"))?;
    temp.keep()
        .map_err(io("move the snapshot file into place"))?;
    Ok(bytes.len() as u64)
}

/// Reads and checks a file written by `write`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let io = |what| {
        move |source| FileError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let file = open_regular(path)
        .map_err(io("open the snapshot file"))?
        .ok_or_else(|| FileError::NotAFile {
            path: path.to_path_buf(),
        })?;
    let size = file
        .metadata()
        .map_err(io("read the snapshot's size"))?
        .len();
    if size > MAX_FILE {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE + 1), &mut bytes)
        .map_err(io("read the snapshot file"))?;
    decode(path, &bytes)
}

pub(crate) fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, FileError> {
    let path = || path.to_path_buf();
    if !bytes.starts_with(&MAGIC) {
        return Err(FileError::NotASnapshot { path: path() });
    }
    let (envelope, rest) =
        postcard::take_from_bytes::<Envelope>(bytes).map_err(|source| FileError::Truncated {
            path: path(),
            source,
        })?;
    if envelope.version != FORMAT_VERSION {
        return Err(FileError::Version {
            path: path(),
            found: envelope.version,
        });
    }
    let found = crc32fast::hash(&envelope.body);
    if found != envelope.crc32 {
        return Err(FileError::Checksum {
            path: path(),
            found,
            expected: envelope.crc32,
        });
    }
    if !rest.is_empty() {
        return Err(FileError::Trailing {
            path: path(),
            extra: rest.len(),
        });
    }
    postcard::from_bytes(&envelope.body).map_err(|source| FileError::Body {
        path: path(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        regs: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "vcpu0".into(),
            regs: (0..100).map(|i| i * 0x1_0001).collect(),
        }
    }

    fn encoded() -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("ember-snapfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("s{:?}", std::thread::current().id()));
        write(&path, &sample()).unwrap();
        assert_eq!(read::<Sample>(&path).unwrap(), sample());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        bytes
    }

    fn decoded(bytes: &[u8]) -> Result<Sample, FileError> {
        decode(Path::new("snap"), bytes)
    }

    #[test]
    fn a_snapshot_round_trips() {
        let bytes = encoded();
        assert!(bytes.starts_with(&MAGIC));
        assert_eq!(decoded(&bytes).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encoded();
        for len in 0..bytes.len() {
            let e = decoded(&bytes[..len]).unwrap_err();
            assert!(
                matches!(
                    e,
                    FileError::NotASnapshot { .. } | FileError::Truncated { .. }
                ),
                "{len}: {e}"
            );
        }
    }

    #[test]
    fn every_flipped_body_byte_is_caught() {
        let bytes = encoded();
        // The body is the last part of the file.
        let body_start = bytes.len() - postcard::to_stdvec(&sample()).unwrap().len();
        for i in body_start..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            let e = decoded(&bad).unwrap_err();
            assert!(matches!(e, FileError::Checksum { .. }), "{i}: {e}");
            assert!(e.to_string().starts_with("snap: corrupted snapshot"));
        }
    }

    #[test]
    fn other_versions_foreign_files_and_trailing_bytes_are_refused() {
        let bytes = encoded();
        let mut other = bytes.clone();
        // The version, a one-byte varint right after the magic.
        other[8] = FORMAT_VERSION as u8 + 1;
        assert!(matches!(
            decoded(&other),
            Err(FileError::Version { found, .. }) if found == FORMAT_VERSION + 1
        ));
        assert!(matches!(
            decoded(b"\x7fELF\x02\x01\x01\x00 not a snapshot"),
            Err(FileError::NotASnapshot { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decoded(&long),
            Err(FileError::Trailing { extra: 1, .. })
        ));
    }
}
