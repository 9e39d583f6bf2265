//! The snapshot file format, version 2: the records of the `sm` column family as they are
//! stored, streamed one at a time, so that neither building nor installing a snapshot holds
//! the whole state as one buffer.
//!
//! ```text
//!   file     = header meta record* end
//!   header   = "FLOWSNAP"                      8 bytes of magic
//!              version          u32 LE         2
//!   meta     = length u32 LE, applied log id   the `sm_meta` "applied" value (a v1 encoding)
//!              length u32 LE, membership       the `sm_meta` "membership" value (a v1 encoding)
//!   record   = 'R' (0x52)
//!              key length       u32 LE         at most MAX_KEY_BYTES
//!              value length     u32 LE         at most MAX_VALUE_BYTES
//!              key, value                      an `sm` record, exactly as stored
//!   end      = 'E' (0x45)
//!              record count     u64 LE
//!              CRC-32           u32 LE         CRC-32/ISO-HDLC (zlib's) of every byte before it
//! ```
//!
//! Records are in strictly increasing key order (RocksDB's bytewise order, as the builder's
//! iterator yields them), which also rules out a repeated key. Nothing may follow the
//! checksum. The reader checks every length against its limit and against the bytes left in
//! the file before it allocates anything, so a lying length prefix costs nothing.
//!
//! The meta repeats what openraft sends alongside the snapshot, so an install can check that
//! the records it received are those of the log id it is told they are.
//!
//! Version 1 (releases before this one) was a single document: `codec::encode_state` of the
//! whole state, that is the version byte 1 followed by JSON. Its first byte is 1, this
//! format's is `F`, so the installer tells them apart by the first byte.

use std::io::{self, Read, Write};

/// The first bytes of every version-2 snapshot file.
pub(crate) const MAGIC: &[u8; 8] = b"FLOWSNAP";
/// The format version that follows the magic.
pub(crate) const VERSION: u32 = 2;
/// The longest key a snapshot may hold. Keys are a prefix and a name, id or padded number.
pub(crate) const MAX_KEY_BYTES: usize = 64 * 1024;
/// The longest value a snapshot may hold (and the longest meta value). No single record comes
/// near it: a Raft message, which carries whole commands, is itself at most 64 MiB.
pub(crate) const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

const TAG_RECORD: u8 = b'R';
const TAG_END: u8 = b'E';

/// Why a snapshot file cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FormatError {
    #[error("cannot read or write the snapshot file: {0}")]
    Io(#[source] io::Error),
    #[error("the snapshot file is truncated: it ends at byte {at}, inside a {what}")]
    Truncated { what: &'static str, at: u64 },
    #[error("not a flowctl snapshot file: it does not start with {MAGIC:?}")]
    BadMagic,
    #[error("snapshot format version {0} is not supported (this release reads version {VERSION})")]
    UnsupportedVersion(u32),
    #[error("a {what} of {len} bytes at byte {at} is larger than the {max} byte limit")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: usize,
        at: u64,
    },
    #[error("a record of {len} bytes at byte {at} runs past the end of the {size} byte file")]
    PastEnd { len: u64, at: u64, size: u64 },
    #[error("unknown record tag {tag:#04x} at byte {at}")]
    UnknownTag { tag: u8, at: u64 },
    #[error("record {index} at byte {at} does not sort after the record before it")]
    OutOfOrder { index: u64, at: u64 },
    #[error("the snapshot's trailer counts {stated} records, the file holds {read}")]
    Count { stated: u64, read: u64 },
    #[error("snapshot checksum mismatch: the trailer says {stated:#010x}, the content gives {computed:#010x}")]
    Checksum { stated: u32, computed: u32 },
    #[error("bytes follow the snapshot's trailer at byte {at}")]
    TrailingBytes { at: u64 },
}

/// CRC-32/ISO-HDLC (the zlib, PNG and Ethernet CRC), table-driven, eight bytes at a time.
#[derive(Debug, Clone)]
pub(crate) struct Crc32(u32);

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            t[s][i] = (t[s - 1][i] >> 8) ^ t[0][(t[s - 1][i] & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

impl Crc32 {
    pub(crate) fn new() -> Self {
        Crc32(!0)
    }

    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        let t = &CRC_TABLES;
        let mut c = self.0;
        while let Some((b, rest)) = bytes.split_first_chunk::<8>() {
            let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            c = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][b[4] as usize]
                ^ t[2][b[5] as usize]
                ^ t[1][b[6] as usize]
                ^ t[0][b[7] as usize];
            bytes = rest;
        }
        for &b in bytes {
            c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub(crate) fn value(&self) -> u32 {
        !self.0
    }
}

/// Streams a snapshot into `out`: [`Writer::new`] writes the header and meta, [`Writer::record`]
/// one record, [`Writer::finish`] the trailer. Holds nothing but the last key.
pub(crate) struct Writer<W: Write> {
    out: W,
    crc: Crc32,
    records: u64,
    bytes: u64,
    last_key: Vec<u8>,
}

impl<W: Write> Writer<W> {
    pub(crate) fn new(out: W, applied: &[u8], membership: &[u8]) -> Result<Self, FormatError> {
        let mut w = Writer {
            out,
            crc: Crc32::new(),
            records: 0,
            bytes: 0,
            last_key: Vec::new(),
        };
        w.put(MAGIC)?;
        w.put(&VERSION.to_le_bytes())?;
        for (what, v) in [("applied log id", applied), ("membership", membership)] {
            w.check_len(what, v.len(), MAX_VALUE_BYTES)?;
            w.put(&(v.len() as u32).to_le_bytes())?;
            w.put(v)?;
        }
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), FormatError> {
        self.out.write_all(b).map_err(FormatError::Io)?;
        self.crc.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn check_len(&self, what: &'static str, len: usize, max: usize) -> Result<(), FormatError> {
        if len > max {
            return Err(FormatError::TooLarge {
                what,
                len: len as u64,
                max,
                at: self.bytes,
            });
        }
        Ok(())
    }

    /// Appends a record. Refuses what a reader would refuse: an oversized key or value, or a
    /// key that does not sort after the previous one.
    pub(crate) fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), FormatError> {
        self.check_len("key", key.len(), MAX_KEY_BYTES)?;
        self.check_len("value", value.len(), MAX_VALUE_BYTES)?;
        if self.records > 0 && key <= self.last_key.as_slice() {
            return Err(FormatError::OutOfOrder {
                index: self.records,
                at: self.bytes,
            });
        }
        self.put(&[TAG_RECORD])?;
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(value)?;
        self.records += 1;
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        Ok(())
    }

    /// Writes the trailer; returns the output and the number of bytes written in all.
    pub(crate) fn finish(mut self) -> Result<(W, u64), FormatError> {
        self.put(&[TAG_END])?;
        self.put(&self.records.to_le_bytes())?;
        let crc = self.crc.value();
        self.out
            .write_all(&crc.to_le_bytes())
            .map_err(FormatError::Io)?;
        Ok((self.out, self.bytes + 4))
    }
}

/// A record as [`Reader::next`] lends it: key and value.
pub(crate) type Record<'a> = (&'a [u8], &'a [u8]);

/// What precedes the records: the applied log id and membership, as `sm_meta` stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) applied: Vec<u8>,
    pub(crate) membership: Vec<u8>,
}

/// Reads a snapshot of `size` bytes record by record, checking every length, the order, the
/// count and the checksum. It holds one key and one value at a time (each within its limit);
/// a record is only known to be intact once [`Reader::next`] has returned `None`.
pub(crate) struct Reader<R: Read> {
    input: R,
    size: u64,
    at: u64,
    crc: Crc32,
    records: u64,
    key: Vec<u8>,
    prev: Vec<u8>,
    value: Vec<u8>,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// Reads the header and meta of a file of `size` bytes.
    pub(crate) fn open(input: R, size: u64) -> Result<(Self, Header), FormatError> {
        let mut r = Reader {
            input,
            size,
            at: 0,
            crc: Crc32::new(),
            records: 0,
            key: Vec::new(),
            prev: Vec::new(),
            value: Vec::new(),
            done: false,
        };
        let mut magic = [0u8; 8];
        r.fill("header", &mut magic)?;
        if &magic != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = r.u32("header")?;
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let mut meta = [Vec::new(), Vec::new()];
        for (what, v) in ["applied log id", "membership"].into_iter().zip(&mut meta) {
            let len = r.len_field(what, MAX_VALUE_BYTES)?;
            r.check_remaining(len)?;
            v.resize(len as usize, 0);
            r.fill(what, v)?;
        }
        let [applied, membership] = meta;
        Ok((
            r,
            Header {
                applied,
                membership,
            },
        ))
    }

    /// Reads exactly `buf.len()` bytes, counting them into the checksum.
    fn fill(&mut self, what: &'static str, buf: &mut [u8]) -> Result<(), FormatError> {
        read_exact(&mut self.input, buf, what, self.at)?;
        self.crc.update(buf);
        self.at += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        let mut b = [0u8; 4];
        self.fill(what, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a length and checks it against `max`.
    fn len_field(&mut self, what: &'static str, max: usize) -> Result<u64, FormatError> {
        let at = self.at;
        let len = u64::from(self.u32(what)?);
        if len > max as u64 {
            return Err(FormatError::TooLarge { what, len, max, at });
        }
        Ok(len)
    }

    /// Checks that `len` more bytes fit in the file, before anything is allocated for them.
    fn check_remaining(&self, len: u64) -> Result<(), FormatError> {
        if len > self.size.saturating_sub(self.at) {
            return Err(FormatError::PastEnd {
                len,
                at: self.at,
                size: self.size,
            });
        }
        Ok(())
    }

    /// The next record, or `None` after the trailer has been read and checked.
    pub(crate) fn next(&mut self) -> Result<Option<Record<'_>>, FormatError> {
        if self.done {
            return Ok(None);
        }
        let at = self.at;
        let mut tag = [0u8; 1];
        self.fill("record tag", &mut tag)?;
        match tag[0] {
            TAG_RECORD => {
                let key_len = self.len_field("key", MAX_KEY_BYTES)?;
                let value_len = self.len_field("value", MAX_VALUE_BYTES)?;
                self.check_remaining(key_len + value_len)?;
                std::mem::swap(&mut self.key, &mut self.prev);
                let mut key = std::mem::take(&mut self.key);
                key.resize(key_len as usize, 0);
                let filled = self.fill("key", &mut key);
                self.key = key;
                filled?;
                let mut value = std::mem::take(&mut self.value);
                value.resize(value_len as usize, 0);
                let filled = self.fill("value", &mut value);
                self.value = value;
                filled?;
                if self.records > 0 && self.key <= self.prev {
                    return Err(FormatError::OutOfOrder {
                        index: self.records,
                        at,
                    });
                }
                self.records += 1;
                Ok(Some((self.key.as_slice(), self.value.as_slice())))
            }
            TAG_END => {
                let mut count = [0u8; 8];
                self.fill("trailer", &mut count)?;
                let computed = self.crc.value();
                let mut crc = [0u8; 4];
                read_exact(&mut self.input, &mut crc, "trailer", self.at)?;
                self.at += 4;
                let stated = u32::from_le_bytes(crc);
                if stated != computed {
                    return Err(FormatError::Checksum { stated, computed });
                }
                let stated = u64::from_le_bytes(count);
                if stated != self.records {
                    return Err(FormatError::Count {
                        stated,
                        read: self.records,
                    });
                }
                let mut extra = [0u8; 1];
                loop {
                    match self.input.read(&mut extra) {
                        Ok(0) => break,
                        Ok(_) => return Err(FormatError::TrailingBytes { at: self.at }),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(FormatError::Io(e)),
                    }
                }
                self.done = true;
                Ok(None)
            }
            tag => Err(FormatError::UnknownTag { tag, at }),
        }
    }
}

fn read_exact(
    input: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
    at: u64,
) -> Result<(), FormatError> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FormatError::Truncated { what, at }
        } else {
            FormatError::Io(e)
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

    use super::*;

    fn crc(bytes: &[u8]) -> u32 {
        let mut c = Crc32::new();
        c.update(bytes);
        c.value()
    }

    /// The textbook bit-at-a-time CRC-32, to check the table-driven one against.
    fn crc_bitwise(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn crc32_matches_the_standard_check_values() {
        assert_eq!(crc(b""), 0);
        assert_eq!(crc(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 999, 1000] {
            assert_eq!(crc(&data[..len]), crc_bitwise(&data[..len]), "length {len}");
        }
        // Fed in pieces, the same as whole.
        let mut c = Crc32::new();
        for piece in data.chunks(13) {
            c.update(piece);
        }
        assert_eq!(c.value(), crc_bitwise(&data));
    }

    fn records() -> Owned {
        vec![
            (b"M/auth".to_vec(), b"\x01{}".to_vec()),
            (b"p/a".to_vec(), vec![1; 300]),
            (b"p/b".to_vec(), Vec::new()),
            (b"x/a".to_vec(), b"\x01{\"x\":1}".to_vec()),
        ]
    }

    fn write(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), b"\x01applied", b"\x01membership").unwrap();
        for (k, v) in records {
            w.record(k, v).unwrap();
        }
        let (out, n) = w.finish().unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    type Owned = Vec<(Vec<u8>, Vec<u8>)>;

    fn read(bytes: &[u8]) -> Result<(Header, Owned), FormatError> {
        let (mut r, header) = Reader::open(bytes, bytes.len() as u64)?;
        let mut out = Vec::new();
        while let Some((k, v)) = r.next()? {
            out.push((k.to_vec(), v.to_vec()));
        }
        // Past the end it stays at the end.
        assert!(r.next()?.is_none());
        Ok((header, out))
    }

    #[test]
    fn records_round_trip_with_their_meta() {
        let bytes = write(&records());
        assert!(bytes.starts_with(b"FLOWSNAP\x02\x00\x00\x00"));
        let (header, got) = read(&bytes).unwrap();
        assert_eq!(header.applied, b"\x01applied");
        assert_eq!(header.membership, b"\x01membership");
        assert_eq!(got, records());
        let (header, got) = read(&write(&[])).unwrap();
        assert_eq!(header.applied, b"\x01applied");
        assert!(got.is_empty());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = write(&records());
        for len in 0..bytes.len() {
            let e = read(&bytes[..len]).unwrap_err();
            assert!(
                matches!(
                    e,
                    FormatError::Truncated { .. } | FormatError::PastEnd { .. }
                ),
                "truncated to {len}: {e}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = write(&records());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            assert!(read(&b).is_err(), "byte {i} flipped");
        }
    }

    /// The offset of the first record's tag in [`write`]'s output.
    fn first_record() -> usize {
        8 + 4 + 4 + b"\x01applied".len() + 4 + b"\x01membership".len()
    }

    #[test]
    fn lengths_over_their_limit_or_past_the_end_are_refused_before_reading() {
        let bytes = write(&records());
        let r = first_record();
        assert_eq!(bytes[r], TAG_RECORD);
        let with = |at: usize, len: u32| {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&len.to_le_bytes());
            read(&b).unwrap_err()
        };
        for (at, what, max) in [
            (r + 1, "key", MAX_KEY_BYTES),
            (r + 5, "value", MAX_VALUE_BYTES),
        ] {
            for len in [max as u32 + 1, u32::MAX] {
                let e = with(at, len);
                assert!(
                    matches!(e, FormatError::TooLarge { what: w, .. } if w == what),
                    "{what} of {len}: {e}"
                );
            }
            // Within the limit, but more than the file holds.
            let e = with(at, 10_000);
            assert!(matches!(e, FormatError::PastEnd { .. }), "{e}");
        }
        let e = with(8 + 4, u32::MAX);
        assert!(
            matches!(
                e,
                FormatError::TooLarge {
                    what: "applied log id",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn malformed_structure_is_refused() {
        let bytes = write(&records());
        let mut b = bytes.clone();
        b[0] = b'G';
        assert!(matches!(read(&b).unwrap_err(), FormatError::BadMagic));
        let mut b = bytes.clone();
        b[8] = 3;
        assert!(matches!(
            read(&b).unwrap_err(),
            FormatError::UnsupportedVersion(3)
        ));
        let mut b = bytes.clone();
        b[first_record()] = b'Z';
        assert!(matches!(
            read(&b).unwrap_err(),
            FormatError::UnknownTag { tag: b'Z', .. }
        ));
        let mut b = bytes.clone();
        b.push(0);
        assert!(matches!(
            read(&b).unwrap_err(),
            FormatError::TrailingBytes { .. }
        ));
        // A wrong count with a checksum that matches it is still refused.
        let mut b = bytes[..bytes.len() - 12].to_vec();
        b.extend_from_slice(&5u64.to_le_bytes());
        let c = crc(&b);
        b.extend_from_slice(&c.to_le_bytes());
        assert!(matches!(
            read(&b).unwrap_err(),
            FormatError::Count { stated: 5, read: 4 }
        ));
        // So is a file whose records are out of order, however well framed.
        let mut swapped = records();
        swapped.swap(1, 2);
        let mut w = Writer::new(Vec::new(), b"a", b"m").unwrap();
        w.record(&swapped[0].0, &swapped[0].1).unwrap();
        w.record(&swapped[1].0, &swapped[1].1).unwrap();
        let e = w.record(&swapped[2].0, &swapped[2].1).unwrap_err();
        assert!(matches!(e, FormatError::OutOfOrder { index: 2, .. }), "{e}");
        let mut dup = Writer::new(Vec::new(), b"a", b"m").unwrap();
        dup.record(b"k", b"1").unwrap();
        assert!(dup.record(b"k", b"2").is_err(), "a repeated key");
    }

    #[test]
    fn an_out_of_order_file_is_refused_by_the_reader() {
        // Hand-framed: the writer will not write one.
        let mut body = Vec::new();
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&VERSION.to_le_bytes());
        for v in [&b"a"[..], b"m"] {
            body.extend_from_slice(&(v.len() as u32).to_le_bytes());
            body.extend_from_slice(v);
        }
        for k in [&b"p/b"[..], b"p/a"] {
            body.push(TAG_RECORD);
            body.extend_from_slice(&(k.len() as u32).to_le_bytes());
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(k);
            body.push(b'v');
        }
        body.push(TAG_END);
        body.extend_from_slice(&2u64.to_le_bytes());
        let c = crc(&body);
        body.extend_from_slice(&c.to_le_bytes());
        assert!(matches!(
            read(&body).unwrap_err(),
            FormatError::OutOfOrder { index: 1, .. }
        ));
    }

    #[test]
    fn the_writer_refuses_records_over_the_limits() {
        let mut w = Writer::new(Vec::new(), b"a", b"m").unwrap();
        let e = w.record(&vec![b'k'; MAX_KEY_BYTES + 1], b"v").unwrap_err();
        assert!(
            matches!(e, FormatError::TooLarge { what: "key", .. }),
            "{e}"
        );
        let e = w.record(b"k", &vec![0; MAX_VALUE_BYTES + 1]).unwrap_err();
        assert!(
            matches!(e, FormatError::TooLarge { what: "value", .. }),
            "{e}"
        );
        // Nothing of a refused record was written.
        let (out, _) = w.finish().unwrap();
        assert!(read(&out).unwrap().1.is_empty());
    }
}
